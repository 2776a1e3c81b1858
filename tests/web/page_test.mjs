// Headless-Chromium test of the web page served by `iadgpt serve` (Debian's chromium driven by
// playwright-core; no browser is downloaded). Drops an image on the page, adds a good reference,
// inspects, checks the result, asks one chat question, saves a screenshot.
//
//   node tests/web/page_test.mjs --url http://127.0.0.1:PORT --image part.jpg --reference good.jpg \
//        --class hazelnut --screenshot build/web_page.png
// Exit 0 when every check passed; prints one JSON line with what the page showed.
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  for (const key of ['url', 'image', 'screenshot']) {
    if (!out[key]) throw new Error(`missing --${key}`);
  }
  return out;
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const opts = args();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failed = null;
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.setDefaultTimeout(60000);
  await page.goto(opts.url, { waitUntil: 'load' });
  check(await page.title() === 'iadgpt — inspect a part', 'page title');
  await page.waitForFunction(() => !document.getElementById('model').textContent.startsWith('loading'));

  // Drag and drop: a real DataTransfer with the image file, dropped on the drop zone.
  const bytes = readFileSync(opts.image).toString('base64');
  const name = basename(opts.image);
  const transfer = await page.evaluateHandle(({ bytes, name }) => {
    const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
    const type = name.endsWith('.png') ? 'image/png' : 'image/jpeg';
    const dt = new DataTransfer();
    dt.items.add(new File([raw], name, { type }));
    return dt;
  }, { bytes, name });
  await page.dispatchEvent('#drop', 'dragover', { dataTransfer: transfer });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: transfer });
  await page.waitForSelector('#preview:not([hidden])');
  check(await page.isEnabled('#inspect'), 'inspect button enabled after the drop');

  if (opts.class) await page.fill('#class', opts.class);
  if (opts.reference) await page.setInputFiles('#refs', opts.reference);
  await page.click('#inspect');
  await page.waitForSelector('#result:not([hidden])');

  const shown = await page.evaluate(() => ({
    score: document.getElementById('score').textContent,
    label: document.getElementById('label').textContent,
    answer: document.querySelector('#chat-log li.assistant').textContent,
    overlayWidth: document.getElementById('overlay').naturalWidth,
    status: document.getElementById('status').textContent,
  }));
  check(/^\d\.\d{3}$/.test(shown.score), `score shown as a number (${shown.score})`);
  check(['Normal', 'Anomalous'].includes(shown.label), `verdict shown (${shown.label})`);
  check(shown.answer.length > 0, 'answer shown');
  check(shown.overlayWidth > 0, 'overlay image decoded');
  if (opts.reference) check(shown.status.includes('1 reference image'), `reference used (${shown.status})`);

  // One chat turn.
  await page.fill('#chat-input', 'Where is the defect?');
  await page.click('#chat-send');
  // The answer streams in (data-state "streaming"); the page marks it "done" after [DONE].
  await page.waitForFunction(() => {
    const items = document.querySelectorAll('#chat-log li');
    return items.length === 3 && items[2].dataset.state === 'done';
  });
  const turns = await page.$$eval('#chat-log li', (items) => items.map((li) => [li.className, li.textContent]));
  check(turns[1][0] === 'user' && turns[1][1] === 'Where is the defect?', 'question shown');
  check(turns[2][0] === 'assistant' && !turns[2][1].startsWith('Error'), `chat answer shown (${turns[2][1]})`);

  await page.screenshot({ path: opts.screenshot, fullPage: true });
  check(errors.length === 0, `no page errors (${errors.join('; ')})`);
  console.log(JSON.stringify({ ok: true, ...shown, chat: turns[2][1], screenshot: opts.screenshot }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(`page test: ${failed.message}`);
  process.exit(1);
}
