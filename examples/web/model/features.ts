// The text features of examples/web/model/tiny-classifier.onnx, shared by the script that makes the
// model (make-model.ts) and the app that serves it (examples/web/web.ts): a text becomes a hashed
// bag of words, FEATURES counts per row (FNV-1a of each lower-cased word, modulo FEATURES).
// A model of your own (MODEL_PATH) takes the same rows, FEATURES wide unless its input says
// otherwise (README "A model behind a URL").

/** Columns of the input `features` of the shipped model. */
export const FEATURES = 256

/** The shipped model's output columns, in order. */
export const LABELS = ['negative', 'neutral', 'positive'] as const

/** The words of a text, lower-cased, in order (letters, digits and apostrophes). */
export function tokenize(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? []
}

/** The feature column of one word: 32-bit FNV-1a of its UTF-16 code units, modulo `width`. */
export function bucket(word: string, width = FEATURES): number {
  let h = 0x811c9dc5
  for (let i = 0; i < word.length; i++) {
    h ^= word.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h % width
}

/** One row per text, `width` word counts each, as one row-major Float32Array (N × width). */
export function featurize(texts: readonly string[], width = FEATURES): Float32Array {
  const rows = new Float32Array(texts.length * width)
  texts.forEach((text, row) => {
    for (const word of tokenize(text)) rows[row * width + bucket(word, width)] += 1
  })
  return rows
}
