/**
 * Picks a TCP port for emulators that cannot listen on port 0 and report back (DynamoDB Local only
 * takes a fixed `-port`). There is a window between closing our probe socket and the emulator
 * binding the port; callers retry with a new port when the emulator reports the address in use.
 */
import net from 'node:net';

/** Returns a port on 127.0.0.1 that was free a moment ago. */
export function findFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not read the probe socket address'));
      });
    });
  });
}
