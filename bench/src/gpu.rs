//! `--gpu`: attnc's CUDA `forward` on the first GPU, timed with CUDA events (NVRTC compilation
//! and the first launch excluded by a warm-up call), for linear elu+1 attention, Gated DeltaNet
//! and causal softmax at (B 8, H 16, N 4096, d 128) and (B 1, H 8, N 4096, d 64), each with
//! `precision = fp32` (3xTF32 tensor-core products, fp32 accuracy) and `precision = tf32`.
//! `--arch sm_80` times the kernels of that architecture's class on this GPU.
//!
//! Reports ms, useful TFLOP/s and GB/s per call. Useful FLOPs: the recurrent form's, 4 N F DV
//! per head for linear attention (the state update and the output) and 6 N F DV for the delta
//! rule (plus the prediction k S); FlashAttention's 4 N^2 d / 2 per head for causal softmax.
//! Bytes: q, k, v (and beta, g) read once and the output written once, in f32. A call includes
//! attnc's per-call host checks of beta and g (one device-to-host copy each) and its workspace
//! allocations: what a user's call costs. `bench/gpu_baselines.py` times flash-linear-attention
//! and FlashAttention on the same GPU for the same table.

use attnc::prelude::*;
use attnc::CudaDevice;

type Result<T> = std::result::Result<T, attnc::Error>;

/// q, k, v and the gates of one shape, on the GPU.
struct Gpu4<const D: usize> {
    q: attnc::CudaTensor<(usize, usize, usize, Const<D>)>,
    beta: attnc::CudaTensor<(usize, usize, usize)>,
    g: attnc::CudaTensor<(usize, usize, usize)>,
}

fn inputs<const D: usize>(dev: &CudaDevice, (b, h, n): (usize, usize, usize)) -> Result<Gpu4<D>> {
    let cpu = Cpu::default();
    let len = b * h * n * D;
    // Deterministic, O(1)-sized values (a cheap hash), so both runs and the baselines agree.
    let data: Vec<f32> = (0..len)
        .map(|i| ((i * 2654435761 % 1000) as f32 / 1000.0) - 0.5)
        .collect();
    let q = cpu.tensor_from_vec(data, (b, h, n, Const::<D>));
    let beta = cpu.tensor_from_vec(vec![0.5; b * h * n], (b, h, n));
    let g = cpu.tensor_from_vec(vec![-0.05; b * h * n], (b, h, n));
    Ok(Gpu4 {
        q: dev.upload(&q)?,
        beta: dev.upload(&beta)?,
        g: dev.upload(&g)?,
    })
}

/// One row of the table.
struct Row {
    variant: &'static str,
    precision: &'static str,
    shape: (usize, usize, usize, usize),
    ms: f64,
    flops: f64,
    bytes: f64,
}

fn time(dev: &CudaDevice, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // compiles (NVRTC, through the PTX cache) and loads the module
    dev.synchronize()?;
    let once = dev.time_ms(1, &mut f)?;
    let runs = ((200.0 / once.max(0.01)) as usize).clamp(3, 100);
    dev.time_ms(runs, f)
}

/// The three variants at one shape and one `precision` (the products' tensor-core mode).
macro_rules! variant_rows {
    ($dev:expr, $rows:expr, $x:expr, $d:literal, ($b:expr, $h:expr, $n:expr), $prec:ident) => {{
        #[attention(head_dim = $d, feature_map = elu_plus_one, normalize = sum, chunk = 64, precision = $prec)]
        struct Linear;
        #[attention(head_dim = $d, update = gated_delta, qk_norm = l2, chunk = 64, precision = $prec)]
        struct GatedDeltaNet;
        #[attention(head_dim = $d, feature_map = softmax, chunk = 64, precision = $prec)]
        struct Softmax;
        let (b, h, n, d) = ($b, $h, $n, $d as usize);
        let x = $x;
        let precision = stringify!($prec);
        let heads = (b * h) as f64;
        let io = 4.0 * heads * n as f64 * (3.0 * d as f64);
        let ms = time($dev, || Linear::forward_cuda(&x.q, &x.q, &x.q).map(|_| ()))?;
        $rows.push(Row {
            variant: "linear elu+1, sum",
            precision,
            shape: (b, h, n, d),
            ms,
            flops: heads * 4.0 * n as f64 * (d * d) as f64,
            bytes: io,
        });
        let ms = time($dev, || {
            GatedDeltaNet::forward_cuda(&x.q, &x.q, &x.q, &x.beta, &x.g).map(|_| ())
        })?;
        $rows.push(Row {
            variant: "Gated DeltaNet",
            precision,
            shape: (b, h, n, d),
            ms,
            flops: heads * 6.0 * n as f64 * (d * d) as f64,
            bytes: io + 8.0 * heads * n as f64,
        });
        let ms = time($dev, || Softmax::forward_cuda(&x.q, &x.q, &x.q).map(|_| ()))?;
        $rows.push(Row {
            variant: "causal softmax",
            precision,
            shape: (b, h, n, d),
            ms,
            flops: heads * 2.0 * (n * n) as f64 * d as f64,
            bytes: io,
        });
    }};
}

/// Every variant at one shape, in both precisions (fp32 = 3xTF32 products, tf32 = one TF32
/// product).
macro_rules! shape_rows {
    ($dev:expr, $rows:expr, $d:literal, $b:expr, $h:expr, $n:expr) => {{
        let x = inputs::<$d>($dev, ($b, $h, $n))?;
        variant_rows!($dev, $rows, &x, $d, ($b, $h, $n), fp32);
        variant_rows!($dev, $rows, &x, $d, ($b, $h, $n), tf32);
    }};
}

/// Runs the GPU table and returns it as markdown. `arch` ("sm_80") times the kernels that
/// architecture's class gets, on this GPU ([`CudaDevice::targeting`]).
pub fn run(arch: Option<&str>) -> Result<String> {
    let dev = CudaDevice::new(0)?;
    let dev = match arch {
        Some(arch) => dev.targeting(arch)?,
        None => dev,
    };
    let mut rows = Vec::new();
    shape_rows!(&dev, rows, 128, 8, 16, 4096);
    shape_rows!(&dev, rows, 64, 1, 8, 4096);
    let mut out = format!(
        "GPU: {} ({}, kernels for {}), attnc forward, f32 tensors, CUDA events\n\n\
         | variant | precision | B, H, N, d | ms | useful TFLOP/s | GB/s |\n\
         |---|---|---|---:|---:|---:|\n",
        dev.name(),
        dev.native_arch(),
        dev.arch()
    );
    for r in &rows {
        let (b, h, n, d) = r.shape;
        out.push_str(&format!(
            "| {} | {} | {b}, {h}, {n}, {d} | {:.3} | {:.2} | {:.0} |\n",
            r.variant,
            r.precision,
            r.ms,
            r.flops / (r.ms * 1e-3) / 1e12,
            r.bytes / (r.ms * 1e-3) / 1e9
        ));
    }
    Ok(out)
}
