// A model behind a URL (README "A model behind a URL"): onnxruntime-node loads an ONNX model once
// per container (@enter), a @batched method runs it on whole batches, and web endpoints take one
// request each, so requests that arrive together are answered by one session.run.
//
//   npm --prefix examples/web install                 # onnxruntime-node, once (~290 MB, not in berth's own install)
//   npx berth serve examples/web.ts                   # or, in examples/web/: npm run web
//   curl -X POST http://127.0.0.1:7451/sentiment/classify -d '{"text":"I love this, it is great"}'
//   curl -N http://127.0.0.1:7451/sentiment/stream -H 'accept: text/event-stream' -d '{"text":"good but slow"}'
//   curl http://127.0.0.1:7451/sentiment/model
//   npx berth run examples/web.ts -- 'what a great day' 'so boring'   # the local entrypoint, no server
//
// MODEL_PATH=/path/to/model.onnx serves another model: its first input takes rows of hashed word
// counts (model/features.ts), its output `probabilities` (else its first) one row of scores per
// text; MODEL_LABELS=a,b,c names the columns.
import { fileURLToPath } from 'node:url'
import { App, Cls, batched, concurrent, enter, webEndpoint } from 'berth'
import * as ort from 'onnxruntime-node'
import { FEATURES, LABELS, featurize, tokenize } from './model/features.ts'

export const app = new App('sentiment')

const SHIPPED = fileURLToPath(new URL('./model/tiny-classifier.onnx', import.meta.url))

export interface Prediction {
  label: string
  /** Each label's probability (the output row, by MODEL_LABELS or the shipped labels). */
  probabilities: Record<string, number>
  /** How many texts the session.run that answered this one took (1 = it ran alone). */
  batchSize: number
}

// One container serves every route: a request is an input of `classify`, which calls `predict`
// through the class's handle as an input of its own (at the control plane, as any caller's), so
// the container must take many inputs at once: the requests, and the batches they wait for.
@app.cls({ minContainers: 1, timeout: 30 })
@concurrent({ maxInputs: 256 })
export class Classifier {
  private session!: ort.InferenceSession
  private modelPath = ''
  private input = ''
  private output = ''
  private width = FEATURES
  private labels: string[] = []
  private batches = 0
  private texts = 0

  @enter() async load() {
    const started = performance.now()
    this.modelPath = process.env.MODEL_PATH ?? SHIPPED
    this.session = await ort.InferenceSession.create(this.modelPath)
    this.input = this.session.inputNames[0]
    this.output = this.session.outputNames.includes('probabilities') ? 'probabilities' : this.session.outputNames[0]
    const columns = (meta: readonly ort.InferenceSession.ValueMetadata[], name: string) => {
      const m = meta.find((v) => v.name === name)
      const d = m?.isTensor ? m.shape[1] : undefined
      return typeof d === 'number' ? d : undefined
    }
    this.width = columns(this.session.inputMetadata, this.input) ?? FEATURES
    const labels = process.env.MODEL_LABELS?.split(',').map((l) => l.trim())
    const outputs = columns(this.session.outputMetadata, this.output)
    this.labels = labels ?? (process.env.MODEL_PATH ? Array.from({ length: outputs ?? 0 }, (_, i) => `label_${i}`) : [...LABELS])
    if (outputs !== undefined && this.labels.length !== outputs) {
      throw new Error(
        `${this.modelPath}: output '${this.output}' has ${outputs} columns but ${this.labels.length} labels are named (${this.labels}); ` +
          `set MODEL_LABELS to ${outputs} comma-separated names`,
      )
    }
    console.log(
      `[sentiment] loaded ${this.modelPath} in ${(performance.now() - started).toFixed(0)} ms: ` +
        `${this.input} [batch, ${this.width}] → ${this.output} [batch, ${this.labels.length}] (${this.labels})`,
    )
  }

  /** One text in, one prediction out; berth gathers the texts of concurrent callers into one batch. */
  @batched({ maxBatchSize: 32, waitMs: 5 })
  async predict(texts: string[]): Promise<Prediction[]> {
    const bad = texts.find((t) => typeof t !== 'string')
    if (bad !== undefined) throw new TypeError(`predict takes one text (a string), got ${JSON.stringify(bad)}`)
    const n = texts.length
    const features = new ort.Tensor('float32', featurize(texts, this.width), [n, this.width])
    const out = await this.session.run({ [this.input]: features }, [this.output])
    const scores = out[this.output].data as Float32Array
    const width = scores.length / n
    this.batches += 1
    this.texts += n
    return texts.map((_, row) => {
      const p = Array.from(scores.subarray(row * width, (row + 1) * width))
      const best = p.indexOf(Math.max(...p))
      const name = (i: number) => this.labels[i] ?? `label_${i}`
      return { label: name(best), probabilities: Object.fromEntries(p.map((v, i) => [name(i), v])), batchSize: n }
    })
  }

  /** POST /sentiment/classify {"text": "..."}: this request's text, batched with the others in flight. */
  @webEndpoint({ method: 'POST', label: 'classify' })
  async classify(body: unknown): Promise<Prediction | Response> {
    const text = textOf(body)
    if (text === undefined) {
      return Response.json(
        { error: `send a JSON object with a string "text", e.g. {"text": "I love it"}; got ${JSON.stringify(body) ?? 'no body'}` },
        { status: 400 },
      )
    }
    return await Cls.of(Classifier).predict.remote(text)
  }

  /**
   * The prediction as the text is read, one item per word: `{ token, index, label, probabilities }`
   * for the words so far. `POST /sentiment/stream` with `{"text": "..."}`: NDJSON, or SSE with
   * `accept: text/event-stream`, each item sent as it is yielded. Each step is an input of
   * `predict`, batched with the other requests.
   */
  @webEndpoint({ label: 'stream' })
  async *stream(input: string | { text: string }) {
    const text = textOf(input)
    if (text === undefined) throw new TypeError(`stream takes a text, or {"text": "..."}; got ${JSON.stringify(input)}`)
    const words = tokenize(text)
    for (let i = 0; i < words.length; i++) {
      const { label, probabilities } = await Cls.of(Classifier).predict.remote(words.slice(0, i + 1).join(' '))
      yield { token: words[i], index: i, label, probabilities }
    }
  }

  /** GET /sentiment/model: what this container serves, and how much it has batched. */
  @webEndpoint({ method: 'GET', label: 'model' })
  async model() {
    return {
      path: this.modelPath,
      input: { name: this.input, shape: ['batch', this.width] },
      output: { name: this.output, shape: ['batch', this.labels.length] },
      labels: this.labels,
      batches: this.batches,
      texts: this.texts,
    }
  }
}

function textOf(value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (typeof value === 'object' && value !== null && typeof (value as { text?: unknown }).text === 'string') {
    return (value as { text: string }).text
  }
  return undefined
}

app.localEntrypoint(async (argv: string[]) => {
  const texts = argv.length > 0 ? argv : ['I love this, it is great', 'What a terrible, boring film', 'The train leaves at noon']
  const results = await Promise.all(texts.map((t) => Cls.of(Classifier).predict.remote(t)))
  results.forEach((r, i) => console.log(`${r.label.padEnd(8)} ${JSON.stringify(r.probabilities)} (batch of ${r.batchSize})  ${texts[i]}`))
})
