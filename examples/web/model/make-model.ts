// Writes examples/web/model/tiny-classifier.onnx, the model examples/web/web.ts serves, and checks that
// onnxruntime gives what the weights say. Run from examples/: `npm run make-model` (or
// `npx tsx model/make-model.ts`). The .onnx is committed, so running this is needed only after
// changing it.
//
// The graph: features [batch, 256] (a hashed bag of words, features.ts) → Gemm with fixed
// weights [256, 3] and bias [3] → logits → Softmax → probabilities [batch, 3], and ArgMax →
// label [batch] (int64). Each word of POSITIVE and NEGATIVE adds 3 to its label's logit; the bias
// gives 'neutral' 1, so a text with none of them is neutral.
//
// The ONNX file is a protobuf ModelProto, encoded here by hand (field numbers from onnx.proto,
// https://github.com/onnx/onnx/blob/main/onnx/onnx.proto): a few lines instead of a dependency.
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import * as ort from 'onnxruntime-node'
import { FEATURES, LABELS, bucket, featurize } from './features.ts'

export const POSITIVE = ['good', 'great', 'love', 'excellent', 'happy', 'wonderful', 'best', 'fast']
export const NEGATIVE = ['bad', 'terrible', 'hate', 'awful', 'sad', 'poor', 'boring', 'slow']
const WORD_WEIGHT = 3
const BIAS = [0, 1, 0]

/** The weights, row-major [FEATURES, LABELS.length]; refuses two sentiment words in one column. */
export function weights(): Float32Array {
  const w = new Float32Array(FEATURES * LABELS.length)
  const owner = new Map<number, string>()
  const add = (words: string[], label: number) => {
    for (const word of words) {
      const col = bucket(word)
      const other = owner.get(col)
      if (other !== undefined) throw new Error(`'${word}' and '${other}' hash to the same feature ${col}: pick other words`)
      owner.set(col, word)
      w[col * LABELS.length + label] = WORD_WEIGHT
    }
  }
  add(NEGATIVE, LABELS.indexOf('negative'))
  add(POSITIVE, LABELS.indexOf('positive'))
  return w
}

// ---- protobuf, the few wire types ONNX needs --------------------------------------------------
type Bytes = Uint8Array
const concat = (...parts: Bytes[]): Bytes => Buffer.concat(parts)
function varint(n: number): Bytes {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`varint: ${n} is not a non-negative integer`)
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}
const int = (field: number, n: number) => concat(varint(field << 3), varint(n))
const len = (field: number, b: Bytes) => concat(varint((field << 3) | 2), varint(b.length), b)
const str = (field: number, s: string) => len(field, Buffer.from(s, 'utf8'))
const msg = (field: number, ...parts: Bytes[]) => len(field, concat(...parts))

// ---- ONNX messages ---------------------------------------------------------------------------
const FLOAT = 1 // TensorProto.DataType
const INT64 = 7
const ATTR_INT = 2 // AttributeProto.AttributeType

/** TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian). */
function tensor(field: number, name: string, dims: number[], data: Float32Array): Bytes {
  const raw = Buffer.alloc(data.length * 4)
  data.forEach((v, i) => raw.writeFloatLE(v, i * 4))
  return msg(field, ...dims.map((d) => int(1, d)), int(2, FLOAT), str(8, name), len(9, raw))
}

/** ValueInfoProto name=1, type=2 → TypeProto.tensor_type=1 → elem_type=1, shape=2 → dim=1 (dim_value=1 | dim_param=2). */
function valueInfo(field: number, name: string, elemType: number, dims: (number | string)[]): Bytes {
  const shape = dims.map((d) => msg(1, typeof d === 'number' ? int(1, d) : str(2, d)))
  return msg(field, str(1, name), msg(2, msg(1, int(1, elemType), msg(2, ...shape))))
}

/** NodeProto: input=1, output=2, name=3, op_type=4, attribute=5 (name=1, i=3, type=20). */
function node(op: string, inputs: string[], outputs: string[], attrs: Record<string, number> = {}): Bytes {
  return msg(
    1,
    ...inputs.map((i) => str(1, i)),
    ...outputs.map((o) => str(2, o)),
    str(3, op.toLowerCase()),
    str(4, op),
    ...Object.entries(attrs).map(([name, i]) => msg(5, str(1, name), int(3, i), int(20, ATTR_INT))),
  )
}

/** ModelProto: ir_version=1, producer_name=2, graph=7, opset_import=8 (domain=1, version=2), doc_string=6. */
export function model(): Bytes {
  const graph = msg(
    7,
    node('Gemm', ['features', 'weights', 'bias'], ['logits']),
    node('Softmax', ['logits'], ['probabilities'], { axis: 1 }),
    node('ArgMax', ['logits'], ['label'], { axis: 1, keepdims: 0 }),
    str(2, 'tiny-classifier'),
    tensor(5, 'weights', [FEATURES, LABELS.length], weights()),
    tensor(5, 'bias', [LABELS.length], Float32Array.from(BIAS)),
    valueInfo(11, 'features', FLOAT, ['batch', FEATURES]),
    valueInfo(12, 'probabilities', FLOAT, ['batch', LABELS.length]),
    valueInfo(12, 'label', INT64, ['batch']),
  )
  return concat(
    int(1, 8),
    str(2, 'berth examples/model/make-model.ts'),
    str(6, `Sentiment of a hashed bag of words (examples/model/features.ts); labels: ${LABELS.join(', ')}`),
    graph,
    msg(8, str(1, ''), int(2, 17)),
  )
}

/** What the graph computes, in plain JavaScript: softmax(features · weights + bias) per row. */
export function expected(texts: string[]): { label: string; probabilities: number[] }[] {
  const x = featurize(texts)
  const w = weights()
  return texts.map((_, row) => {
    const logits = BIAS.map((b, l) => {
      let s = b
      for (let f = 0; f < FEATURES; f++) s += x[row * FEATURES + f] * w[f * LABELS.length + l]
      return s
    })
    const m = Math.max(...logits)
    const e = logits.map((v) => Math.exp(v - m))
    const sum = e.reduce((a, b) => a + b, 0)
    return { label: LABELS[logits.indexOf(m)], probabilities: e.map((v) => v / sum) }
  })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const out = fileURLToPath(new URL('./tiny-classifier.onnx', import.meta.url))
  const bytes = model()
  writeFileSync(out, bytes)
  console.log(`wrote ${out} (${bytes.length} bytes)`)

  // Check it with onnxruntime: the same answers as the plain computation, for a batch of texts.
  const session = await ort.InferenceSession.create(out)
  const texts = ['I love this, it is great', 'What a terrible, boring film', 'The train leaves at noon', 'good but slow and bad']
  const result = await session.run({ features: new ort.Tensor('float32', featurize(texts), [texts.length, FEATURES]) })
  const probs = result.probabilities.data as Float32Array
  const labels = result.label.data as BigInt64Array
  expected(texts).forEach((want, row) => {
    const got = Array.from(probs.subarray(row * LABELS.length, (row + 1) * LABELS.length))
    const off = got.findIndex((p, l) => Math.abs(p - want.probabilities[l]) > 1e-5)
    if (LABELS[Number(labels[row])] !== want.label || off !== -1) {
      throw new Error(`onnxruntime disagrees on ${JSON.stringify(texts[row])}: got ${LABELS[Number(labels[row])]} ${got}, want ${want.label} ${want.probabilities}`)
    }
    console.log(`${want.label.padEnd(8)} ${got.map((p) => p.toFixed(4)).join(' ')}  ${JSON.stringify(texts[row])}`)
  })
  console.log(`onnxruntime ${ort.env.versions.common}: inputs ${session.inputNames}, outputs ${session.outputNames}; matches the weights`)
}
