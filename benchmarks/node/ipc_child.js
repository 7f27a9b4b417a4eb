// The child of ipc_parent.js. Usage (by fork): ipc_child.js MODE [N]
//
// Says {type: 'ready'} first, then: 'stream' and 'large' count the messages
// (and the characters of their 'data') and report {count, bytes} after the
// Nth; 'pingpong' sends each message back; 'idle' only waits.
const mode = process.argv[2];
const expected = Number(process.argv[3] || 0);
let count = 0;
let bytes = 0;

process.on('message', (m) => {
  if (mode === 'pingpong') {
    process.send(m);
    return;
  }
  count++;
  if (m.data !== undefined) {
    bytes += m.data.length;
  }
  if (count === expected) {
    process.send({ type: 'done', count, bytes });
  }
});
process.send({ type: 'ready' });
