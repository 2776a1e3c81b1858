// The official `openai` npm client (pinned in package-lock.json) against `iadgpt serve`: one
// plain and one streamed chat completion with an image, the same seed and temperature 0, and an
// unknown model. Run by ctest through tests/serve/openai_client_test.cpp.
//
//   node tests/web/openai_client_test.mjs --url http://127.0.0.1:PORT --image part.jpg --class hazelnut
// Exit 0 when every check passed; prints one JSON line with what the server answered.
import OpenAI from 'openai';
import { readFileSync } from 'node:fs';

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  for (const key of ['url', 'image']) {
    if (!out[key]) throw new Error(`missing --${key}`);
  }
  return out;
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const opts = args();
const client = new OpenAI({ baseURL: `${opts.url}/v1`, apiKey: 'not-needed-on-loopback', maxRetries: 0, timeout: 120000 });
const image = `data:image/jpeg;base64,${readFileSync(opts.image).toString('base64')}`;
const maxTokens = 12;
const request = {
  model: 'iadgpt',
  messages: [
    { role: 'system', content: 'You inspect industrial parts.' },
    {
      role: 'user',
      content: [
        { type: 'text', text: 'Is there any anomaly in the image?' },
        { type: 'image_url', image_url: { url: image } },
      ],
    },
  ],
  temperature: 0,
  seed: 7,
  max_tokens: maxTokens,
  class: opts.class || 'object', // our extension; the client passes unknown fields through
};

// Plain.
const plain = await client.chat.completions.create(request);
check(plain.object === 'chat.completion', `object ${plain.object}`);
const choice = plain.choices[0];
check(choice.message.role === 'assistant', 'role assistant');
check(typeof choice.message.content === 'string' && choice.message.content.length > 0, 'non-empty content');
check(['stop', 'length'].includes(choice.finish_reason), `finish_reason ${choice.finish_reason}`);
const u = plain.usage;
check(u.prompt_tokens > 0 && u.completion_tokens > 0, `usage counts ${JSON.stringify(u)}`);
check(u.total_tokens === u.prompt_tokens + u.completion_tokens, 'total_tokens = prompt + completion');
// "length" is true to what happened: exactly max_tokens were generated; "stop": fewer.
check(choice.finish_reason === 'length' ? u.completion_tokens === maxTokens : u.completion_tokens <= maxTokens,
      `finish_reason ${choice.finish_reason} with ${u.completion_tokens} of ${maxTokens} tokens`);

// Streamed, same request.
const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
let content = '';
let role = null;
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  check(chunk.object === 'chat.completion.chunk', `chunk object ${chunk.object}`);
  if (chunk.usage) usage = chunk.usage;
  if (chunk.choices.length === 0) continue;
  const delta = chunk.choices[0].delta;
  if (delta.role) role = delta.role;
  if (delta.content) content += delta.content;
  if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
}
check(role === 'assistant', 'the stream opens with the assistant role');
check(content === choice.message.content, `streamed deltas ${JSON.stringify(content)} = plain answer ${JSON.stringify(choice.message.content)}`);
check(finish === choice.finish_reason, `stream finish_reason ${finish}`);
check(usage && JSON.stringify(usage) === JSON.stringify(u), `stream usage ${JSON.stringify(usage)}`);

// An unknown model: the client's NotFoundError with OpenAI's code.
let notFound = null;
try {
  await client.chat.completions.create({ ...request, model: 'gpt-4o' });
} catch (e) {
  notFound = e;
}
check(notFound && notFound.status === 404 && notFound.code === 'model_not_found', `unknown model: ${notFound}`);

console.log(JSON.stringify({ ok: true, content, finish_reason: finish, usage, chunks }));
