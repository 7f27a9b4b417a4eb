// IPC benchmarks of child_process.fork(); prints one JSON line of figures.
//
// Usage: node ipc_parent.js stream N | pingpong N | large SIZE COUNT | cost K
//
//   stream N          N small messages parent -> child; the child reports the
//                     count once it has them all: msgs/s.
//   pingpong N        N round trips, one message in flight: round trips/s.
//   large SIZE COUNT  COUNT messages carrying a SIZE-character string: MB/s.
//   cost K            K children forked one after the other: fork() ->
//                     'spawn' and fork() -> the child's first message, and
//                     the idle child's VmRSS (medians).
//
// benchmarks/geventfork_ipc/parent.py is the same program for geventfork:
// keep the two in step (same messages, same JSON).
const { fork } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const CHILD = path.join(__dirname, 'ipc_child.js');

function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function report(figures) {
  console.log(JSON.stringify(figures));
}

// Fork a child in MODE and call onReady(child) once it said it is ready.
function forkReady(args, onReady) {
  const child = fork(CHILD, args);
  child.once('message', () => onReady(child));
  return child;
}

function stream(n) {
  forkReady(['stream', n], (child) => {
    const start = now();
    child.on('message', (m) => {
      const elapsed = now() - start;
      report({ bench: 'stream', n: m.count, elapsed_s: elapsed, msgs_per_s: m.count / elapsed });
      child.disconnect();
    });
    for (let i = 0; i < n; i++) {
      child.send({ seq: i, text: 'hello' });
    }
  });
}

function pingpong(n) {
  forkReady(['pingpong', n], (child) => {
    const start = now();
    child.on('message', (m) => {
      if (m.seq + 1 < n) {
        child.send({ seq: m.seq + 1 });
        return;
      }
      const elapsed = now() - start;
      report({ bench: 'pingpong', n, elapsed_s: elapsed, round_trips_per_s: n / elapsed });
      child.disconnect();
    });
    child.send({ seq: 0 });
  });
}

function large(size, count) {
  const data = 'x'.repeat(size);
  forkReady(['large', count], (child) => {
    const start = now();
    child.on('message', (m) => {
      const elapsed = now() - start;
      const ok = m.count === count && m.bytes === size * count;
      report({ bench: 'large', size, count: m.count, ok, elapsed_s: elapsed,
               mb_per_s: (size * count) / elapsed / 1e6 });
      child.disconnect();
    });
    for (let i = 0; i < count; i++) {
      child.send({ seq: i, data });
    }
  });
}

function vmRssKib(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function cost(k, samples = []) {
  if (samples.length === k) {
    report({ bench: 'cost', k,
             spawn_ms: median(samples.map((s) => s.spawn_ms)),
             ready_ms: median(samples.map((s) => s.ready_ms)),
             rss_kib: median(samples.map((s) => s.rss_kib)) });
    return;
  }
  const sample = {};
  const start = now();
  const child = fork(CHILD, ['idle']);
  child.on('spawn', () => { sample.spawn_ms = (now() - start) * 1e3; });
  child.once('message', () => {
    sample.ready_ms = (now() - start) * 1e3;
    sample.rss_kib = vmRssKib(child.pid);
    child.on('exit', () => cost(k, [...samples, sample]));
    child.disconnect();
  });
}

const [bench, a, b] = process.argv.slice(2);
const benches = { stream, pingpong, large, cost };
if (!benches[bench]) {
  console.error('usage: node ipc_parent.js stream N | pingpong N | large SIZE COUNT | cost K');
  process.exit(2);
}
if (bench === 'cost') {
  cost(Number(a));
} else {
  benches[bench](Number(a), Number(b));
}
