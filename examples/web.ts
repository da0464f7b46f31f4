// A model behind a URL (README "A model behind a URL"): the app is examples/web/web.ts, in a
// package of its own (examples/web/package.json) so that onnxruntime-node is installed only by
// those who run it (`npm --prefix examples/web install`), and the other examples stay in berth's
// own package, where `import 'berth'` needs no install of its own.
//
//   npx berth serve examples/web.ts
export * from './web/web.ts'
