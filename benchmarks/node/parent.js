// Node's own "sending a socket object" example (child_process docs), as users
// write it: no 'error' listener anywhere.
//
// Usage: node parent.js [PORT] [SPECIAL_ADDRESS] [HOST]
//
// Added to the docs' code: the port, special address and host arguments, and
// the "listening on HOST:PORT" line, so that the benchmark can find it.
const { fork } = require('node:child_process');
const path = require('node:path');

const port = Number(process.argv[2] || 1337);
const specialAddress = process.argv[3] || '74.125.127.100';
const host = process.argv[4] || '0.0.0.0';

const normal = fork(path.join(__dirname, 'child.js'), ['normal']);
const special = fork(path.join(__dirname, 'child.js'), ['special']);

// Open up the server and send sockets to child. Use pauseOnConnect to prevent
// the sockets from being read before they are sent to the child process.
const server = require('node:net').createServer({ pauseOnConnect: true });
server.on('connection', (socket) => {

  // If this is special priority...
  if (socket.remoteAddress === specialAddress) {
    special.send('socket', socket);
    return;
  }
  // This is normal priority.
  normal.send('socket', socket);
});
server.listen(port, host, () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
