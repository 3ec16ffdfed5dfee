// BullMQ as alchemy's benchmark peer: the same no-op workload, on the same Redis.
//
//   node bench.mjs drain --url URL --prefix P --jobs N --concurrency C
//       prefill N no-op jobs (addBulk), then one Worker drains them; prints one JSON line:
//       {"jobs":N,"seconds":S,"jobs_per_s":R,"cpu_us_per_job":U}, timed from the first job's
//       start to the Nth completion (the process's own CPU over that span).
//   node bench.mjs work --url URL --prefix P --concurrency C
//       a Worker that records each job's pickup (start - job.timestamp, ms) until SIGTERM,
//       then prints {"pickup_ms":[...]} and exits.
//   node bench.mjs feed --url URL --prefix P --rate R --seconds S
//       adds R jobs per second for S seconds; prints {"added":N}.
//
// BullMQ's defaults are kept: completed jobs are kept, the events stream is written.
import { Queue, Worker } from "bullmq";

const QUEUE = "bench";

function options(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

function connectionOf(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), db: Number(u.pathname.slice(1) || 0) };
}

async function drain(o) {
  const connection = connectionOf(o.url);
  const jobs = Number(o.jobs);
  const queue = new Queue(QUEUE, { connection, prefix: o.prefix });
  for (let start = 0; start < jobs; start += 1000) {
    const batch = [];
    for (let n = start; n < Math.min(jobs, start + 1000); n++) batch.push({ name: "noop", data: {} });
    await queue.addBulk(batch);
  }
  let first = null;
  let cpuAtFirst = null;
  let done = 0;
  const finished = new Promise((resolve) => {
    const worker = new Worker(
      QUEUE,
      async () => {
        if (first === null) {
          first = process.hrtime.bigint();
          cpuAtFirst = process.cpuUsage();
        }
      },
      { connection, prefix: o.prefix, concurrency: Number(o.concurrency) },
    );
    worker.on("completed", () => {
      done += 1;
      if (done === jobs) resolve(worker);
    });
  });
  const worker = await finished;
  const seconds = Number(process.hrtime.bigint() - first) / 1e9;
  const cpu = process.cpuUsage(cpuAtFirst);
  await worker.close();
  await queue.close();
  const cpuUs = cpu.user + cpu.system;
  console.log(
    JSON.stringify({ jobs, seconds, jobs_per_s: jobs / seconds, cpu_us_per_job: cpuUs / jobs }),
  );
}

async function work(o) {
  const connection = connectionOf(o.url);
  const picked = [];
  const worker = new Worker(
    QUEUE,
    async (job) => {
      picked.push(Date.now() - job.timestamp);
    },
    { connection, prefix: o.prefix, concurrency: Number(o.concurrency) },
  );
  await worker.waitUntilReady();
  console.log(JSON.stringify({ ready: true }));
  process.on("SIGTERM", async () => {
    await worker.close();
    console.log(JSON.stringify({ pickup_ms: picked }));
    process.exit(0);
  });
}

async function feed(o) {
  const connection = connectionOf(o.url);
  const queue = new Queue(QUEUE, { connection, prefix: o.prefix });
  const rate = Number(o.rate);
  const total = Math.round(rate * Number(o.seconds));
  const began = Date.now();
  for (let n = 0; n < total; n++) {
    const due = began + (n * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await queue.add("noop", {});
  }
  await queue.close();
  console.log(JSON.stringify({ added: total }));
}

const [mode, ...rest] = process.argv.slice(2);
const run = { drain, work, feed }[mode];
if (!run) {
  console.error("usage: node bench.mjs drain|work|feed --url URL --prefix P ...");
  process.exit(2);
}
await run(options(rest));
