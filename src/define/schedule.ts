// Schedules (README "Schedules"): `app.function({ schedule: new Period({ hours: 1 }) }, fn)` or
// `new Cron('0 9 * * 1-5', { timezone: 'Europe/Paris' })`. `berth serve` calls the function with
// no arguments at each tick (crates/berth-server/src/schedule.rs); `berth run` does not, as
// Modal runs schedules only once an app is deployed. A pattern or time zone that does not
// parse is an InvalidError here, when the schedule is made.
import { binding } from '../native.ts'
import { InvalidError } from '../shared/errors.ts'

/** What the control plane reads of a schedule (crates/berth-node/src/serve.rs `BindingSchedule`). */
export interface ScheduleSpec {
  periodMs?: number
  cron?: string
  timezone?: string
}

const UNITS = { days: 86_400_000, hours: 3_600_000, minutes: 60_000, seconds: 1000 } as const

/** Every fixed interval; the first tick one interval after the function is served. */
export class Period {
  readonly ms: number
  constructor(every: { days?: number; hours?: number; minutes?: number; seconds?: number }) {
    if (every === null || typeof every !== 'object') {
      throw new InvalidError(`new Period(${String(every)}): give an object, e.g. new Period({ minutes: 5 })`)
    }
    let ms = 0
    for (const [key, value] of Object.entries(every)) {
      const unit = UNITS[key as keyof typeof UNITS]
      if (unit === undefined) {
        throw new InvalidError(`new Period({ ${key} }): unknown unit '${key}'; use days, hours, minutes or seconds`)
      }
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
        throw new InvalidError(`new Period({ ${key}: ${String(value)} }): give a number of ${key} from 0 up`)
      }
      ms += value * unit
    }
    if (!(ms >= 1)) throw new InvalidError(`new Period(${JSON.stringify(every)}): the period is zero; give e.g. { seconds: 30 }`)
    this.ms = ms
  }
  /** @internal */
  spec(): ScheduleSpec {
    return { periodMs: this.ms }
  }
}

/** At the times a cron pattern names (minute hour day-of-month month day-of-week), in a time zone (UTC by default). */
export class Cron {
  readonly pattern: string
  readonly timezone: string | undefined
  constructor(pattern: string, opts: { timezone?: string } = {}) {
    if (typeof pattern !== 'string') throw new InvalidError(`new Cron(${String(pattern)}): give a pattern such as '0 9 * * 1-5'`)
    const timezone = opts?.timezone
    if (timezone !== undefined && typeof timezone !== 'string') {
      throw new InvalidError(`new Cron('${pattern}', { timezone }): give an IANA time zone name such as 'Europe/Paris'`)
    }
    const why = binding().checkSchedule({ cron: pattern, timezone })
    if (why) throw new InvalidError(`new ${why}`)
    this.pattern = pattern
    this.timezone = timezone
  }
  /** @internal */
  spec(): ScheduleSpec {
    return { cron: this.pattern, timezone: this.timezone }
  }
}

/** `schedule` as an option gives it: a Period or a Cron, else why not. */
export function validateSchedule(v: unknown, where: string): ScheduleSpec {
  if (v instanceof Period || v instanceof Cron) return v.spec()
  throw new InvalidError(
    `${where}: schedule must be a new Period({ ... }) or a new Cron('...'), e.g. schedule: new Period({ minutes: 5 }); got ${typeof v === 'string' ? `'${v}' (wrap a cron pattern: new Cron('${v}'))` : String(v)}`,
  )
}
