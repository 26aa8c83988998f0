/**
 * An invalid option or combination of options given to a library call (a run's configuration, a model
 * description). `option` names the option in the library's words (`scales`, `mode`, `model`); front ends
 * map it to their own spelling (the CLI: `--scales`, `--mode`, `--arch/--blocks/--widths`).
 */
export class OptionError extends Error {
  constructor(readonly option: string, message: string) {
    super(message);
    this.name = 'OptionError';
  }
}
