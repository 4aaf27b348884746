#!/usr/bin/env node
// Reference Node.js consumer of a hashindex ONNX model (contract: ../README.md).
//
//   node encode.js MODEL.onnx INPUTS.f32 CODES.u8 [--embedding EMB.f32] [--batch 4096]
//
// INPUTS.f32: raw little-endian float32, row-major [N, ...per-sample shape]; the per-sample
//   shape ([D] or [3, H, W]) is read from the model's input, so N = file size / (4 * prod).
// CODES.u8:   raw uint8 [N, bits/8], row-major, FAISS bit order (as the model emits it).
// EMB.f32:    optional raw little-endian float32 [N, bits], the continuous code.
// Prints one JSON line: {"n", "bits", "input", "sampleShape"}.
'use strict';

const fs = require('node:fs');
const ort = require('onnxruntime-node');

function parseArgs(argv) {
  const positional = [];
  const opts = { embedding: null, batch: 4096 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--embedding') opts.embedding = argv[++i];
    else if (argv[i] === '--batch') opts.batch = Number.parseInt(argv[++i], 10);
    else positional.push(argv[i]);
  }
  if (positional.length !== 3 || !(opts.batch > 0)) {
    throw new Error('usage: node encode.js MODEL.onnx INPUTS.f32 CODES.u8 [--embedding EMB.f32] [--batch N]');
  }
  return { model: positional[0], inputs: positional[1], codes: positional[2], ...opts };
}

// Float32 view of a file's bytes; copies only when the buffer is not 4-byte aligned.
// (Float32Array uses the platform's byte order; every platform onnxruntime-node ships for is little-endian.)
function readFloat32(path) {
  const buf = fs.readFileSync(path);
  if (buf.byteLength % 4 !== 0) throw new Error(`${path}: size ${buf.byteLength} is not a multiple of 4 (float32)`);
  const aligned = buf.byteOffset % 4 === 0 ? buf : Buffer.from(buf);
  return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4);
}

function staticShape(meta, what) {
  const rest = meta.shape.slice(1);
  if (!rest.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`${what} '${meta.name}' has a non-static per-sample shape ${JSON.stringify(meta.shape)}`);
  }
  return rest;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const session = await ort.InferenceSession.create(args.model, { executionProviders: ['cpu'] });
  if (session.inputNames.length !== 1) throw new Error(`expected one model input, got ${session.inputNames}`);
  for (const name of ['codes', 'embedding']) {
    if (!session.outputNames.includes(name)) throw new Error(`model has no '${name}' output: not a hashindex model`);
  }
  const inputMeta = session.inputMetadata[0];
  const sampleShape = staticShape(inputMeta, 'input');
  const codesMeta = session.outputMetadata.find((m) => m.name === 'codes');
  const bytesPerCode = staticShape(codesMeta, 'output')[0];
  const bits = bytesPerCode * 8;
  const perSample = sampleShape.reduce((a, b) => a * b, 1);

  const x = readFloat32(args.inputs);
  if (x.length % perSample !== 0) {
    throw new Error(`${args.inputs}: ${x.length} floats is not a whole number of [${sampleShape}] samples`);
  }
  const n = x.length / perSample;
  const codes = new Uint8Array(n * bytesPerCode);
  const embedding = args.embedding ? new Float32Array(n * bits) : null;
  const outputs = embedding ? ['codes', 'embedding'] : ['codes'];

  for (let start = 0; start < n; start += args.batch) {
    const rows = Math.min(args.batch, n - start);
    const batch = x.subarray(start * perSample, (start + rows) * perSample);
    const feeds = { [inputMeta.name]: new ort.Tensor('float32', batch, [rows, ...sampleShape]) };
    const result = await session.run(feeds, outputs);
    if (result.codes.type !== 'uint8') throw new Error(`'codes' is ${result.codes.type}, expected uint8`);
    codes.set(result.codes.data, start * bytesPerCode);
    if (embedding) embedding.set(result.embedding.data, start * bits);
  }

  fs.writeFileSync(args.codes, codes);
  if (embedding) fs.writeFileSync(args.embedding, new Uint8Array(embedding.buffer));
  await session.release();
  console.log(JSON.stringify({ n, bits, input: inputMeta.name, sampleShape }));
}

main().catch((err) => {
  console.error(`encode.js: ${err.message}`);
  process.exit(1);
});
