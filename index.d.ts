export * from './dist/types/index.js'
