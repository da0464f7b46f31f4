// Handles on an app served elsewhere (`berth serve`): Function.fromName, Cls.fromName. Their
// calls always go to the control plane; the server checks their arguments.
import { encodeValue } from '../shared/cbor.ts'
import { InvalidError } from '../shared/errors.ts'
import { Invocable } from './handle.ts'
import type { HandleTarget } from './transport.ts'
import { RemoteTransport } from './remote.ts'
import type { ClsHandle, RemoteFunctionHandle } from './types.ts'

const EMPTY = Buffer.alloc(0)

function served(app: string, name: string, method: string, params: Buffer, label: string): Invocable {
  const transport = new RemoteTransport(app, name, method, params, label)
  const target: HandleTarget = {
    label,
    arity: undefined,
    gen: undefined,
    transport: () => transport,
    local: async () => {
      throw new InvalidError(`${label}.local(): a handle from fromName runs on the server; call .remote()`)
    },
  }
  return new Invocable(target)
}

export const Function = {
  /** A handle on a function of a served app; connects at the first call. */
  fromName<T = (...args: any[]) => any>(app: string, name: string): RemoteFunctionHandle<T> {
    return served(app, name, '', EMPTY, `${app}/${name}`) as unknown as RemoteFunctionHandle<T>
  },
}

/** A handle on a class of a served app: each property is that method's handle. */
export function clsFromName<T>(app: string, name: string, params?: Record<string, unknown>): ClsHandle<T> {
  const encoded = params === undefined ? EMPTY : Buffer.from(encodeValue(params))
  const handles = new Map<string, Invocable>()
  return new Proxy({} as ClsHandle<T>, {
    get(_, prop) {
      if (typeof prop !== 'string' || prop === 'then') return undefined
      let h = handles.get(prop)
      if (!h) {
        h = served(app, name, prop, encoded, `${app}/${name}.${prop}`)
        handles.set(prop, h)
      }
      return h
    },
  })
}
