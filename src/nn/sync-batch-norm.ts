/**
 * Batch normalisation with statistics over every rank of a data-parallel job
 * (PyTorch's nn.SyncBatchNorm in training), composed from ordinary ops and one
 * collective, a differentiable sum over the ranks: autograd then derives the
 * backward (which all-reduces the gradients of the statistics, as PyTorch's).
 *
 *   mean = A(Σ_local x) / N,  var = A(Σ_local (x - mean)²) / N   (N = Σ of the ranks' counts)
 *   y = (x - mean) · rsqrt(var + eps) · weight + bias
 *
 * A is the sum over the ranks. The variance is two-pass (no E[x²] - E[x]² cancellation), and
 * the sums travel in float64 (the count stays exact past 2^24 elements). The running
 * statistics take the global mean and the unbiased global variance (var · N / (N - 1)).
 * Cost: two small allreduces in forward (C + 1 and C numbers) and two in backward.
 */
import * as torch from '../torch/index.js';
import type { Tensor } from '../torch/index.js';

/** The collective SyncBatchNorm needs: a sum over the ranks that autograd can differentiate. */
export interface BatchStatsReducer {
  readonly worldSize: number;
  /** The sum over the ranks of a small tensor (every rank calls it in the same order); backward sums the gradient over the ranks. */
  allreduceSumGrad(t: Tensor): Tensor;
}

export interface SyncBatchNormOptions {
  weight: Tensor | null;
  bias: Tensor | null;
  momentum: number;
  eps: number;
}

/** Training-mode batch norm of a [N, C, H, W] input with statistics over every rank; updates the running statistics in place. */
export function syncBatchNorm(x: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, reducer: BatchStatsReducer, o: SyncBatchNormOptions): Tensor {
  const [n, c, h, w] = x.shape;
  const perChannel = [1, c, 1, 1];
  const dims = [0, 2, 3];
  // [Σx per channel | this rank's count]: one allreduce gives the sums and N.
  const local = torch.cat([x.sum(dims).to('float64'), torch.full([1], n * h * w, { dtype: 'float64' })]);
  const totals = reducer.allreduceSumGrad(local);
  const count = totals.narrow(0, c, 1).item();
  if (count <= 1) throw new Error(`SyncBatchNorm: expected more than 1 value per channel when training, got input size [${x.shape.join(', ')}] on ${reducer.worldSize} ranks`);
  const mean = totals.narrow(0, 0, c).div(count);
  const centred = x.sub(mean.to(x.dtype).view(perChannel));
  const variance = reducer.allreduceSumGrad(centred.square().sum(dims).to('float64')).div(count);
  let scale = variance.add(o.eps).rsqrt().to(x.dtype);
  if (o.weight) scale = scale.mul(o.weight);
  const y = centred.mul(scale.view(perChannel));
  if (runningMean && runningVar) {
    torch.noGrad(() => {
      runningMean.mul_(1 - o.momentum).add_(mean.to(runningMean.dtype), o.momentum);
      runningVar.mul_(1 - o.momentum).add_(variance.mul(count / (count - 1)).to(runningVar.dtype), o.momentum);
    });
  }
  return o.bias ? y.add(o.bias.view(perChannel)) : y;
}
