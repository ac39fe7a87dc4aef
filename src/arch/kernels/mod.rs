//! wick's own CPU kernels: the parts of a forward pass where candle's stock operators leave
//! speed on the table, each proven against a straightforward reference in its unit tests.
//!
//! | kernel | replaces | why it wins |
//! |---|---|---|
//! | [`conv`]: im2col convolution with BatchNorm folded in and a fused bias/residual/ReLU epilogue | candle `conv2d` + `batch_norm` + `relu` + add | one matmul per batch instead of one per image, and one pass over memory instead of four |
//! | [`depthwise`]: direct depthwise convolution (`groups == channels`) with bias and activation fused | grouped conv2d (one GEMM per channel) | one pass over a padded copy of each plane, a vectorised loop per tap |
//! | [`winograd`]: F(2×2, 3×3) for 3×3 stride-1 convolutions | the im2col route | 16 products per channel pair and output tile instead of 36, on 83% of resnet18's multiply-adds |
//! | [`fused`]: bias + activation (+ residual), masked softmax (with an optional relative position bias) | candle's elementwise ops on its own `BarrierPool` | every parallel step on one rayon pool (the two pools fought for 2 cores), no extra allocation |
//! | [`embed`]: embedding sum (any position ids, optional token types), sentence pooling (mean, CLS, max) + L2 normalisation | candle `index_select` + adds, pooling ops | one pass each, on the same rayon pool |
//! | [`planes`]: channel-major `[C, N, H, W]` feature maps, pooling, LayerNorm over channels, per-image channel scaling | NCHW tensors, candle pooling, ConvNeXt's permute + `layer_norm` + permute | convolution outputs need no transpose between layers |
//!
//! Together they took resnet18 from 0.4× to parity with PyTorch eager and MiniLM from 0.5× to
//! 1.2–1.7× on the machines of the README's performance section; the measurements and the
//! reasoning behind each choice are in docs/kernels.md. Nothing here knows about models,
//! configs or files: kernels take tensors and slices and return tensors.

pub mod conv;
pub mod depthwise;
pub mod embed;
pub mod fused;
pub mod planes;
pub mod winograd;
