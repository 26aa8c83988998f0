/**
 * Progress display: a one-line bar (loss, accuracy, img/s, ETA) redrawn in
 * place on a TTY; plain lines at a fixed interval otherwise (CI logs, files).
 */
export interface ProgressStats {
  loss: number;
  acc: number;
  imgPerSec: number;
  lr: number;
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '--:--';
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const ss = String(Math.floor(s % 60)).padStart(2, '0');
  return h > 0 ? `${h}:${String(m % 60).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

export class Progress {
  readonly #tty: boolean;
  #lastPlain = 0;
  constructor(
    readonly label: string,
    readonly total: number,
    readonly out: NodeJS.WriteStream = process.stderr,
    readonly plainEverySec = 10,
  ) {
    this.#tty = !!out.isTTY && process.env.CI !== 'true';
  }

  update(done: number, stats: ProgressStats, etaSec: number): void {
    const info = `loss ${stats.loss.toFixed(4)} acc ${(stats.acc * 100).toFixed(1)}% ${stats.imgPerSec.toFixed(0)} img/s lr ${stats.lr.toExponential(2)} ETA ${fmtTime(etaSec)}`;
    if (this.#tty) {
      const width = 24;
      const filled = Math.round((done / this.total) * width);
      this.out.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${this.total} ${info}\x1b[K`);
      return;
    }
    const now = Date.now();
    if (now - this.#lastPlain >= this.plainEverySec * 1000 || done === this.total) {
      this.#lastPlain = now;
      this.out.write(`${this.label} ${done}/${this.total} ${info}\n`);
    }
  }

  done(): void {
    if (this.#tty) this.out.write('\n');
  }
}
