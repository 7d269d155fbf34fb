// The tracer_wrap loop from Node (18+, built-in fetch, no npm packages):
//   1. ask the sidecar to route the input;
//   2. if it answers locally, use its label (no LLM call);
//   3. otherwise call the LLM and log its label as a trace with the route's plan, so the next
//      refit learns from it (and audit samples reach the drift breaker).
// Any sidecar failure falls back to the LLM: tracer_wrap must never break a call.
//
//   tracer-wrap serve --store ./.tracer_wrap --port 8000 [--token T]
//   TRACER_WRAP_URL=http://127.0.0.1:8000 TRACER_WRAP_TOKEN=T node route_then_llm.mjs

const BASE = process.env.TRACER_WRAP_URL ?? "http://127.0.0.1:8000";
const TOKEN = process.env.TRACER_WRAP_TOKEN;
const TASK = process.env.TRACER_WRAP_TASK ?? "support-intent";

async function sidecar(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  const res = await fetch(`${BASE}/v1/tasks/${encodeURIComponent(TASK)}${path}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(2000),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(`${res.status} ${data.error?.code}: ${data.error?.message}`);
  return data;
}

// Stand-in for your real LLM call (OpenAI, Anthropic, ...): returns one label.
async function callLLM(text) {
  const t = text.toLowerCase();
  if (t.includes("card")) return "card_lost";
  if (t.includes("refund") || t.includes("money back")) return "refund";
  return "other";
}

export async function classify(text) {
  let decision = null;
  try {
    decision = await sidecar("/route", { text });
  } catch (err) {
    // Sidecar down, timeout, bad token: use the LLM.
    console.warn(`tracer_wrap route failed, using the LLM: ${err.message}`);
  }
  if (decision?.local) {
    return { label: decision.label, source: `local v${decision.version}` };
  }
  const label = await callLLM(text);
  try {
    // Echo the plan: it says whether this call was an audit sample and whether its trace may
    // calibrate the gate (the sidecar signed it, so it cannot be forged).
    await sidecar("/traces", { input: text, teacher: label, plan: decision?.plan });
  } catch (err) {
    console.warn(`tracer_wrap trace logging failed: ${err.message}`);
  }
  return { label, source: "llm" };
}

const inputs = process.argv.slice(2).length
  ? process.argv.slice(2)
  : ["I lost my card yesterday", "Can I get my money back?", "What is the exchange rate?"];
for (const text of inputs) {
  const { label, source } = await classify(text);
  console.log(`${source.padEnd(10)} ${label.padEnd(12)} ${text}`);
}
