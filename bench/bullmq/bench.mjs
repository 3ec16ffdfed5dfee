// BullMQ as alchemy's benchmark peer: the same no-op workload, on the same Redis.
//
//   node bench.mjs worker --url URL --prefix P --concurrency C
//       one long-lived Worker (like alchemy's one worker process), BullMQ's defaults kept
//       (completed jobs kept, the events stream written). Prints {"ready":true}, then reads
//       commands on stdin, one per line, and answers each with one JSON line:
//         drain N   time from the next job's start to the Nth completion after it:
//                   {"jobs":N,"seconds":S,"jobs_per_s":R,"cpu_us_per_job":U}
//         pickup    start recording each job's pickup (start - data.enqueued_at, ms)
//         report    {"pickup_ms":[...]} (and stop recording)
//         quit      close the worker and exit
//   node bench.mjs fill --url URL --prefix P --jobs N
//       pause the queue, add N no-op jobs (addBulk), print {"added":N}
//   node bench.mjs resume --url URL --prefix P
//   node bench.mjs feed --url URL --prefix P --rate R --seconds S
//       add R jobs per second for S seconds, each stamped with data.enqueued_at (ms, with
//       a fraction, as alchemy's producer stamps enqueued_at); print {"added":N}
import { createInterface } from "node:readline";
import { Queue, Worker } from "bullmq";

const QUEUE = "bench";

// Wall-clock milliseconds with a fraction, like alchemy's time.time() * 1000 (Date.now()
// and job.timestamp are whole milliseconds, half a millisecond too coarse for a pickup).
function nowMs() {
  return performance.timeOrigin + performance.now();
}

function options(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

function connectionOf(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), db: Number(u.pathname.slice(1) || 0) };
}

async function worker(o) {
  const connection = connectionOf(o.url);
  let drain = null; // {want, done, first, cpu, resolve}
  let picked = null;
  const w = new Worker(
    QUEUE,
    async (job) => {
      if (picked !== null) picked.push(nowMs() - (job.data.enqueued_at ?? job.timestamp));
      if (drain !== null && drain.first === null) {
        drain.first = process.hrtime.bigint();
        drain.cpu = process.cpuUsage();
      }
    },
    { connection, prefix: o.prefix, concurrency: Number(o.concurrency) },
  );
  w.on("completed", () => {
    if (drain === null || drain.first === null) return;
    drain.done += 1;
    if (drain.done === drain.want) {
      const seconds = Number(process.hrtime.bigint() - drain.first) / 1e9;
      const cpu = process.cpuUsage(drain.cpu);
      const jobs = drain.want;
      drain = null;
      console.log(
        JSON.stringify({
          jobs,
          seconds,
          jobs_per_s: jobs / seconds,
          cpu_us_per_job: (cpu.user + cpu.system) / jobs,
        }),
      );
    }
  });
  await w.waitUntilReady();
  console.log(JSON.stringify({ ready: true }));
  for await (const line of createInterface({ input: process.stdin })) {
    const [command, arg] = line.trim().split(/\s+/);
    if (command === "drain") drain = { want: Number(arg), done: 0, first: null, cpu: null };
    else if (command === "pickup") picked = [];
    else if (command === "report") {
      console.log(JSON.stringify({ pickup_ms: picked || [] }));
      picked = null;
    } else if (command === "quit") break;
  }
  await w.close();
  process.exit(0);
}

async function fill(o) {
  const queue = new Queue(QUEUE, { connection: connectionOf(o.url), prefix: o.prefix });
  await queue.pause();
  const jobs = Number(o.jobs);
  for (let start = 0; start < jobs; start += 1000) {
    const batch = [];
    for (let n = start; n < Math.min(jobs, start + 1000); n++) batch.push({ name: "noop", data: {} });
    await queue.addBulk(batch);
  }
  await queue.close();
  console.log(JSON.stringify({ added: jobs }));
}

async function resume(o) {
  const queue = new Queue(QUEUE, { connection: connectionOf(o.url), prefix: o.prefix });
  await queue.resume();
  await queue.close();
  console.log(JSON.stringify({ resumed: true }));
}

async function feed(o) {
  const queue = new Queue(QUEUE, { connection: connectionOf(o.url), prefix: o.prefix });
  const rate = Number(o.rate);
  const total = Math.round(rate * Number(o.seconds));
  const began = Date.now();
  for (let n = 0; n < total; n++) {
    const wait = began + (n * 1000) / rate - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await queue.add("noop", { enqueued_at: nowMs() });
  }
  await queue.close();
  console.log(JSON.stringify({ added: total }));
}

const [mode, ...rest] = process.argv.slice(2);
const run = { worker, fill, resume, feed }[mode];
if (!run) {
  console.error("usage: node bench.mjs worker|fill|resume|feed --url URL --prefix P ...");
  process.exit(2);
}
await run(options(rest));
