/** A loader worker thread: builds batches (see loader-core.ts) and transfers them back. */
import { parentPort, workerData } from 'node:worker_threads';
import { BatchMaker, type BatchJob, type CoreInit } from './loader-core.js';

const maker = new BatchMaker(workerData as CoreInit);

parentPort!.on('message', (msg: BatchJob & { id: number }) => {
  try {
    const { x, y } = maker.make(msg);
    parentPort!.postMessage({ id: msg.id, x, y }, [x.buffer as ArrayBuffer, y.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ id: msg.id, error: (e as Error).stack ?? String(e) });
  }
});
