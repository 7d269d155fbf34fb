// Classification calls from Node through the tracer_wrap gateway, with the official openai client.
//
// Nothing here knows about tracer_wrap: the client is pointed at the gateway by its base URL, and
// the gateway answers certified calls locally (system_fingerprint "tracer_wrap-local", zero
// usage) and forwards everything else, with this process's API key, to the real API.
//
//   tracer-wrap gateway --store ./.tracer_wrap            # in another terminal
//   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-... \
//     node classify.mjs "I lost my card" "Can I get my money back?"
//   node classify.mjs --stream "I lost my card"           # the same answers, streamed
//   node classify.mjs --file inputs.json                  # a JSON list of texts
//   node classify.mjs --chat "Write a haiku about banks"  # free-form chat: always forwarded
//
// One JSON line per input: {"input", "label", "local", "stream"} (or {"input", "reply"} for
// --chat).

import { readFileSync } from "node:fs";
import OpenAI from "openai";

const MODEL = process.env.MODEL ?? "gpt-4o-mini";
const SYSTEM =
  "Classify the banking request. Answer with the label only: " +
  "card_lost, refund, top_up or exchange_rate.";

// OPENAI_BASE_URL and OPENAI_API_KEY come from the environment, as in any OpenAI application.
// The gateway's own token, if it requires one, travels in its own header.
const client = new OpenAI({
  maxRetries: 0,
  defaultHeaders: process.env.TRACER_WRAP_TOKEN
    ? { "X-Tracer-Wrap-Token": process.env.TRACER_WRAP_TOKEN }
    : undefined,
});

function messages(text) {
  return [
    { role: "system", content: SYSTEM },
    { role: "user", content: text },
  ];
}

async function classify(text) {
  const completion = await client.chat.completions.create({ model: MODEL, messages: messages(text) });
  return {
    input: text,
    label: completion.choices[0].message.content,
    local: completion.system_fingerprint === "tracer_wrap-local",
    stream: false,
  };
}

async function classifyStreamed(text) {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: messages(text),
    stream: true,
  });
  let label = "";
  let local = false;
  for await (const chunk of stream) {
    label += chunk.choices[0]?.delta?.content ?? "";
    local = chunk.system_fingerprint === "tracer_wrap-local";
  }
  return { input: text, label, local, stream: true };
}

async function chat(text) {
  // Two turns and a tool the model may or may not call: no single label, so the gateway
  // forwards it untouched and traces nothing.
  const completion = await client.chat.completions.create({
    model: MODEL,
    messages: [
      { role: "user", content: "Hi!" },
      { role: "assistant", content: "Hello, how can I help?" },
      { role: "user", content: text },
    ],
    tools: [{ type: "function", function: { name: "search", parameters: { type: "object" } } }],
  });
  return { input: text, reply: completion.choices[0].message.content };
}

const args = process.argv.slice(2);
let run = classify;
let inputs = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--stream") run = classifyStreamed;
  else if (args[i] === "--chat") run = chat;
  else if (args[i] === "--file") inputs.push(...JSON.parse(readFileSync(args[++i], "utf8")));
  else inputs.push(args[i]);
}
if (inputs.length === 0) {
  inputs = ["I lost my card yesterday", "Can I get my money back?", "What is the exchange rate?"];
}
for (const text of inputs) {
  console.log(JSON.stringify(await run(text)));
}
