/** HTML reports of runs: curves, speed and memory, searched scales, deployed weights, quantization. */
export { collectReport, renderReport, writeReport, reproduceCommand, type ReportData, type ReportOptions } from './html.js';
export { findRunDirs, findQuantStudies, loadRun, loadRunModels, seriesOf, armName, scaleStatsOf, splitScaleKey, type RunData, type RunConfig, type QuantStudy, type ScaleStats } from './runs.js';
export { groupArms, summarize, compare, spreadOf, type Arm, type Spread, type Comparison } from './stats.js';
export type { ChartSpec, SeriesSpec } from './charts.js';
export { groupQuantStudies, quantComparisons, quantRowLabel, type QuantGroup } from './quant.js';
