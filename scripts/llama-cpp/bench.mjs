// Times llama.cpp through node-llama-cpp's prebuilt CPU library, in the manner of llama-bench:
//   pp: one forward of P prompt tokens into an empty context;
//   tg: N tokens decoded one at a time after it (greedy; llama-bench does not sample, a greedy
//       pick over the vocabulary is < 0.1 ms of a step).
// One JSON line per timed run, after one untimed warm-up run.
//   node bench.mjs MODEL.gguf [threads=2] [P=64] [N=32] [runs=1]
import {getLlama} from "node-llama-cpp";

const [modelPath, threadsArg = "2", pArg = "64", nArg = "32", runsArg = "1"] = process.argv.slice(2);
if (!modelPath) {
  console.error("usage: node bench.mjs MODEL.gguf [threads] [prompt tokens] [decoded tokens] [runs]");
  process.exit(2);
}
const threads = Number(threadsArg), P = Number(pArg), N = Number(nArg), runs = Number(runsArg);
const llama = await getLlama({gpu: false, build: "never", maxThreads: threads, logLevel: "error"});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const context = await model.createContext({
  contextSize: 512, batchSize: Math.max(P, 64), threads: {ideal: threads, min: threads}, flashAttention: false,
});
const cpu = (llama.systemInfo.match(/AVX512_BF16 = 1/) ? "avx512bf16" : llama.systemInfo.match(/AVX2 = 1/) ? "avx2" : "generic");
const prompt = Array.from({length: P}, (_, i) => 300 + i);  // ordinary vocabulary entries
const seconds = (t0) => (performance.now() - t0) / 1000;
for (let r = 0; r <= runs; ++r) {
  const sequence = context.getSequence();
  let t0 = performance.now();
  await sequence.evaluateWithoutGeneratingNewTokens(prompt);
  const pp = P / seconds(t0);
  t0 = performance.now();
  let n = 0;
  for await (const token of sequence.evaluate([400], {temperature: 0})) {
    if (++n >= N) break;
  }
  const tg = N / seconds(t0);
  if (r > 0)
    console.log(JSON.stringify({program: "llama.cpp", cpu, threads, pp_tokens: P, pp_tok_s: +pp.toFixed(2),
                                tg_tokens: N, tg_tok_s: +tg.toFixed(2)}));
  sequence.dispose();
}
await context.dispose();
await model.dispose();
