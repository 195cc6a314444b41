//! GPU execution: every variant's `forward_cuda`, `forward_with_state_cuda` (from a non-zero
//! initial state, and chained over two halves of the sequence) and `step_cuda` against the CPU
//! kernels (themselves checked against the f64 oracle in tests/numerics.rs), max-rel <= 1e-4.
//!
//! Runs where `CudaDevice::new(0)` succeeds (a driver, a GPU and NVRTC); elsewhere each test
//! prints a SKIP line, or fails when `ATTNC_REQUIRE_CUDA=1` (set it on GPU machines so a broken
//! driver set-up cannot pass silently). CI has no GPU.
//!
//! `ATTNC_TEST_ARCH=sm_80` (or sm_86, sm_75) runs the kernels of that architecture's
//! shared-memory class on the GPU at hand (`CudaDevice::targeting`), so one GPU tests every
//! class's kernels: `bench/gpu/run.sh` runs the suite once per class.

mod common;

use attnc::prelude::*;
use common::{max_rel_err, Inputs, Rng};

const TOL: f64 = 1e-4;

fn gpu_or_skip(test: &str) -> Option<CudaDevice> {
    let opened = CudaDevice::new(0).and_then(|dev| match std::env::var("ATTNC_TEST_ARCH") {
        Ok(arch) => dev.targeting(&arch),
        Err(_) => Ok(dev),
    });
    match opened {
        Ok(dev) => Some(dev),
        Err(e) => {
            let required = std::env::var("ATTNC_REQUIRE_CUDA").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: ATTNC_REQUIRE_CUDA=1 but no usable GPU: {e}"
            );
            println!("SKIP: {test}: no usable CUDA GPU ({e})");
            None
        }
    }
}

fn close<S: Shape>(label: &str, gpu: &Tensor<S, f32, Cpu>, cpu: &Tensor<S, f32, Cpu>) -> f64 {
    let want: Vec<f64> = cpu.as_vec().into_iter().map(f64::from).collect();
    let err = max_rel_err(&gpu.as_vec(), &want);
    assert!(err <= TOL, "{label}: max-rel {err:e} > {TOL:e}");
    err
}

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;

fn tok<const D: usize>(data: &[f32], b: usize, x: usize, y: usize) -> Tok<D> {
    Cpu::default().tensor_from_vec(data.to_vec(), (b, x, y, Const))
}

/// `beta`, `g` or `proj` (an extra argument's name) picks the first, second or third of three
/// expressions.
macro_rules! pick {
    (beta, $b:expr, $g:expr, $p:expr) => {
        $b
    };
    (g, $b:expr, $g:expr, $p:expr) => {
        $g
    };
    (proj, $b:expr, $g:expr, $p:expr) => {
        $p
    };
}

macro_rules! gpu_spec {
    ($m:ident, [$($extra:ident),*], $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            const DK: usize = Attn::HEAD_DIM;
            const DV: usize = Attn::VALUE_DIM;

            #[test]
            fn gpu_matches_cpu() {
                let Some(gpu) = gpu_or_skip(stringify!($m)) else { return };
                let (b, h, c) = (2, 3, Attn::CHUNK);
                let mut worst = 0.0f64;
                // FAVOR+'s projection (sampled for every spec; only favor specs take it).
                let w = attnc::favor::orthogonal_gaussian::<{ Attn::FEATURE_DIM }, DK>(3)
                    .expect("projection");
                let gw = gpu.upload(&w).expect("upload");
                let _ = (&w, &gw);
                for (i, n) in [1, c - 1, c + 1, 3 * c + 7, 1000].into_iter().enumerate() {
                    // Axes 1 and 2 are (H, N) or (N, H) by layout; the data is random either way.
                    let bnhd = Attn::spec().layout == attnc::spec::Layout::Bnhd;
                    let (x1, x2) = if bnhd { (n, h) } else { (h, n) };
                    let x = Inputs::random(b, h, n, DK, DV, 300 + i as u64);
                    let (q, k) = (tok::<DK>(&x.q, b, x1, x2), tok::<DK>(&x.k, b, x1, x2));
                    let v = tok::<DV>(&x.v, b, x1, x2);
                    let dev = Cpu::default();
                    let beta = dev.tensor_from_vec(x.beta.clone(), (b, x1, x2));
                    let g = dev.tensor_from_vec(x.g.clone(), (b, x1, x2));
                    let _ = (&beta, &g);
                    let up = |t: &Tok<DK>| gpu.upload(t).expect("upload");
                    let (gq, gk) = (up(&q), up(&k));
                    let gv = gpu.upload(&v).expect("upload");
                    let gbeta = gpu.upload(&beta).expect("upload");
                    let gg = gpu.upload(&g).expect("upload");
                    let _ = (&gbeta, &gg);

                    // A non-zero initial state (z positive when normalised).
                    let mut rng = Rng::new(11 + i as u64);
                    let f = Attn::FEATURE_DIM;
                    let s0 = rng.normals(b * h * f * DV);
                    let z0 = Attn::spec().normalize == attnc::spec::Normalize::Sum;
                    let z0 = z0.then(|| (0..b * h * f).map(|_| 0.5 + rng.uniform()).collect());
                    let st0 = State::from_vecs(b, h, s0, z0).expect("state");
                    let gst0 = gpu.upload_state(&st0).expect("upload state");

                    let (o_cpu, st_cpu) =
                        Attn::forward_with_state(q.clone(), k.clone(), v.clone(), $(pick!($extra, beta.clone(), g.clone(), w.clone()),)* Some(&st0)).expect("cpu");
                    let (o_gpu, st_gpu) =
                        Attn::forward_with_state_cuda(&gq, &gk, &gv, $(pick!($extra, &gbeta, &gg, &gw),)* Some(&gst0))
                            .expect("gpu forward");
                    worst = worst.max(close("forward o", &o_gpu.download().expect("download"), &o_cpu));
                    let st_gpu = st_gpu.download().expect("download state");
                    close("forward S", &st_gpu.s, &st_cpu.s);
                    if let (Some(a), Some(b)) = (&st_gpu.z, &st_cpu.z) {
                        close("forward z", a, b);
                    }

                    // step from the final state, one more token.
                    let q_t: Tensor<(usize, usize, Const<DK>), f32, Cpu> =
                        dev.tensor_from_vec(x.q[..b * h * DK].to_vec(), (b, h, Const));
                    let v_t: Tensor<(usize, usize, Const<DV>), f32, Cpu> =
                        dev.tensor_from_vec(x.v[..b * h * DV].to_vec(), (b, h, Const));
                    let beta_t = dev.tensor_from_vec(x.beta[..b * h].to_vec(), (b, h));
                    let g_t = dev.tensor_from_vec(x.g[..b * h].to_vec(), (b, h));
                    let _ = (&beta_t, &g_t);
                    let mut cpu_state = st_cpu;
                    let mut gpu_state = gpu.upload_state(&cpu_state).expect("upload state");
                    let (gq_t, gv_t) = (gpu.upload(&q_t).expect("up"), gpu.upload(&v_t).expect("up"));
                    let (gbeta_t, gg_t) = (gpu.upload(&beta_t).expect("up"), gpu.upload(&g_t).expect("up"));
                    let _ = (&gbeta_t, &gg_t);
                    let o_cpu = Attn::step(&mut cpu_state, &q_t, &q_t, &v_t, $(pick!($extra, &beta_t, &g_t, &w),)*)
                        .expect("cpu step");
                    let o_gpu = Attn::step_cuda(&mut gpu_state, &gq_t, &gq_t, &gv_t, $(pick!($extra, &gbeta_t, &gg_t, &gw),)*)
                        .expect("gpu step");
                    close("step o", &o_gpu.download().expect("download"), &o_cpu);
                    close("step S", &gpu_state.download().expect("download").s, &cpu_state.s);
                }
                println!("{}: GPU forward max-rel against the CPU kernel {worst:.2e}", stringify!($m));
            }
        }
    };
}

gpu_spec!(
    elu_sum,
    [],
    head_dim = 64,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 64
);
gpu_spec!(
    identity_c16_dv,
    [],
    head_dim = 32,
    value_dim = 48,
    chunk = 16
);
gpu_spec!(
    closure_sum,
    [],
    head_dim = 32,
    feature_map = |x| if x > 0.0 { x + 1.0 } else { (0.5 * x).exp() },
    normalize = sum,
    chunk = 32
);
gpu_spec!(
    noncausal_relu_bnhd,
    [],
    head_dim = 64,
    value_dim = 32,
    feature_map = relu,
    mask = none,
    layout = bnhd
);
gpu_spec!(
    gated_l2,
    [g],
    head_dim = 64,
    update = gated,
    qk_norm = l2,
    chunk = 64
);
gpu_spec!(
    gated_sum_bnhd_c128,
    [g],
    head_dim = 64,
    update = gated,
    feature_map = sigmoid,
    normalize = sum,
    layout = bnhd,
    chunk = 128
);
gpu_spec!(
    deltanet,
    [beta],
    head_dim = 64,
    update = delta,
    qk_norm = l2,
    chunk = 64
);
gpu_spec!(
    gated_deltanet_c256,
    [beta, g],
    head_dim = 128,
    update = gated_delta,
    qk_norm = l2,
    chunk = 256
);
gpu_spec!(
    taylor2_sum,
    [],
    head_dim = 16,
    feature_map = taylor2,
    normalize = sum,
    chunk = 32
);
gpu_spec!(
    dpfp_delta,
    [beta],
    head_dim = 16,
    feature_map = dpfp(nu = 2),
    update = delta,
    qk_norm = l2,
    chunk = 32
);
gpu_spec!(
    favor_sum,
    [proj],
    head_dim = 64,
    feature_map = favor(features = 128),
    normalize = sum,
    chunk = 64
);
gpu_spec!(
    favor_gated_delta_bnhd,
    [beta, g, proj],
    head_dim = 32,
    feature_map = favor(features = 256),
    update = gated_delta,
    qk_norm = l2,
    layout = bnhd,
    chunk = 32
);

macro_rules! gpu_softmax {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            const DK: usize = Attn::HEAD_DIM;
            const DV: usize = Attn::VALUE_DIM;

            #[test]
            fn gpu_matches_cpu() {
                let Some(gpu) = gpu_or_skip(stringify!($m)) else { return };
                let (b, h, c) = (2, 3, Attn::CHUNK);
                for (i, n) in [1, c - 1, c + 1, 3 * c + 7, 1000].into_iter().enumerate() {
                    let x = Inputs::random(b, h, n, DK, DV, 500 + i as u64);
                    let (q, k) = (tok::<DK>(&x.q, b, h, n), tok::<DK>(&x.k, b, h, n));
                    let v = tok::<DV>(&x.v, b, h, n);
                    let o_cpu = Attn::forward(q.clone(), k.clone(), v.clone()).expect("cpu");
                    let (gq, gk) = (gpu.upload(&q).expect("up"), gpu.upload(&k).expect("up"));
                    let gv = gpu.upload(&v).expect("up");
                    let o_gpu = Attn::forward_cuda(&gq, &gk, &gv).expect("gpu softmax");
                    close("softmax o", &o_gpu.download().expect("download"), &o_cpu);
                }
            }
        }
    };
}

gpu_softmax!(
    softmax_causal,
    head_dim = 64,
    feature_map = softmax,
    chunk = 64
);
gpu_softmax!(
    softmax_none_l2,
    head_dim = 32,
    value_dim = 64,
    feature_map = softmax,
    mask = none,
    qk_norm = l2,
    chunk = 32
);

/// Gated DeltaNet's layer with `short_conv`, momentum with the normaliser, and rpe: the systems'
/// CUDA entry points against the CPU's (`forward_with_state` from a state with non-zero tails
/// and momentum buffers, then `step`; rpe's `forward`).
mod systems {
    use super::*;

    #[attention(head_dim = 16, short_conv = 4, qk_norm = l2, update = gated_delta, chunk = 16)]
    pub struct ConvGatedDelta;

    #[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, short_conv = 3, update = momentum(mu = 0.8), chunk = 16)]
    pub struct ConvMomentum;

    #[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz, chunk = 16)]
    pub struct Rpe;

    #[test]
    fn rpe_gpu_matches_cpu() {
        let Some(gpu) = gpu_or_skip("systems::rpe") else {
            return;
        };
        for n in [1, 37, 1000] {
            let (b, h) = (2, 3);
            let x = Inputs::random(b, h, n, 16, 16, 13);
            let (q, k, v) = (
                tok::<16>(&x.q, b, h, n),
                tok::<16>(&x.k, b, h, n),
                tok::<16>(&x.v, b, h, n),
            );
            let bias_data: Vec<f32> = Rng::new(14)
                .normals(h * (2 * n - 1))
                .iter()
                .map(|x| 0.5 * x - 0.2)
                .collect();
            let bias = Cpu::default().tensor_from_vec(bias_data, (h, 2 * n - 1));
            let o_cpu =
                Rpe::forward(q.clone(), k.clone(), v.clone(), bias.clone()).expect("cpu forward");
            let up = |t: &Tok<16>| gpu.upload(t).expect("upload");
            let o_gpu = Rpe::forward_cuda(
                &up(&q),
                &up(&k),
                &up(&v),
                &gpu.upload(&bias).expect("upload"),
            )
            .expect("gpu forward");
            close(
                &format!("rpe o, n = {n}"),
                &o_gpu.download().expect("download"),
                &o_cpu,
            );
        }
    }

    type W<const D: usize, const K: usize> = Tensor<(usize, Const<D>, Const<K>), f32, Cpu>;

    fn weights<const D: usize, const K: usize>(h: usize, seed: u64) -> W<D, K> {
        let data = Rng::new(seed).normals(h * D * K);
        Cpu::default().tensor_from_vec(data, (h, Const, Const))
    }

    #[test]
    fn conv_gated_delta_gpu_matches_cpu() {
        let Some(gpu) = gpu_or_skip("systems::conv_gated_delta") else {
            return;
        };
        let (b, h, n) = (2, 3, 77);
        let x = Inputs::random(b, h, n, 16, 16, 11);
        let (q, k, v) = (
            tok::<16>(&x.q, b, h, n),
            tok::<16>(&x.k, b, h, n),
            tok::<16>(&x.v, b, h, n),
        );
        let dev = Cpu::default();
        let beta = dev.tensor_from_vec(x.beta.clone(), (b, h, n));
        let g = dev.tensor_from_vec(x.g.clone(), (b, h, n));
        let (wq, wk, wv) = (
            weights::<16, 4>(h, 1),
            weights::<16, 4>(h, 2),
            weights::<16, 4>(h, 3),
        );
        let (o_cpu, st_cpu) = ConvGatedDelta::forward_with_state(
            q.clone(),
            k.clone(),
            v.clone(),
            beta.clone(),
            g.clone(),
            wq.clone(),
            wk.clone(),
            wv.clone(),
            None,
        )
        .expect("cpu forward");
        let up = |t: &Tok<16>| gpu.upload(t).expect("upload");
        let (gq, gk, gv) = (up(&q), up(&k), up(&v));
        let (gb, gg) = (
            gpu.upload(&beta).expect("upload"),
            gpu.upload(&g).expect("upload"),
        );
        let (gwq, gwk, gwv) = (
            gpu.upload(&wq).expect("upload"),
            gpu.upload(&wk).expect("upload"),
            gpu.upload(&wv).expect("upload"),
        );
        let (o_gpu, mut st_gpu) = ConvGatedDelta::forward_with_state_cuda(
            &gq, &gk, &gv, &gb, &gg, &gwq, &gwk, &gwv, None,
        )
        .expect("gpu forward");
        close("forward o", &o_gpu.download().expect("download"), &o_cpu);
        let down = st_gpu.download().expect("download");
        close("forward S", &down.s, &st_cpu.s);
        assert_eq!(
            down.conv_v.expect("tail").as_vec(),
            st_cpu.conv_v.clone().expect("tail").as_vec()
        );

        let mut st = st_cpu;
        let first = |t: &Tok<16>| -> Tensor<(usize, usize, Const<16>), f32, Cpu> {
            let data: Vec<f32> = (0..b * h)
                .flat_map(|i| t.as_vec()[i * n * 16..i * n * 16 + 16].to_vec())
                .collect();
            dev.tensor_from_vec(data, (b, h, Const))
        };
        let scalars =
            |t: &Tensor<(usize, usize, usize), f32, Cpu>| -> Tensor<(usize, usize), f32, Cpu> {
                let data: Vec<f32> = (0..b * h).map(|i| t.as_vec()[i * n]).collect();
                dev.tensor_from_vec(data, (b, h))
            };
        let (q1, k1, v1, b1, g1) = (first(&q), first(&k), first(&v), scalars(&beta), scalars(&g));
        let o_cpu = ConvGatedDelta::step(&mut st, &q1, &k1, &v1, &b1, &g1, &wq, &wk, &wv)
            .expect("cpu step");
        let o_gpu = ConvGatedDelta::step_cuda(
            &mut st_gpu,
            &gpu.upload(&q1).expect("upload"),
            &gpu.upload(&k1).expect("upload"),
            &gpu.upload(&v1).expect("upload"),
            &gpu.upload(&b1).expect("upload"),
            &gpu.upload(&g1).expect("upload"),
            &gwq,
            &gwk,
            &gwv,
        )
        .expect("gpu step");
        close("step o", &o_gpu.download().expect("download"), &o_cpu);
        close("step S", &st_gpu.download().expect("download").s, &st.s);
    }

    #[test]
    fn conv_momentum_gpu_matches_cpu() {
        let Some(gpu) = gpu_or_skip("systems::conv_momentum") else {
            return;
        };
        let (b, h, n) = (2, 2, 50);
        let x = Inputs::random(b, h, n, 16, 16, 12);
        let (q, k, v) = (
            tok::<16>(&x.q, b, h, n),
            tok::<16>(&x.k, b, h, n),
            tok::<16>(&x.v, b, h, n),
        );
        let (wq, wk, wv) = (
            weights::<16, 3>(h, 4),
            weights::<16, 3>(h, 5),
            weights::<16, 3>(h, 6),
        );
        // A non-zero initial state: the CPU's state after the first half, uploaded.
        let (_, st0) = ConvMomentum::forward_with_state(
            q.clone(),
            k.clone(),
            v.clone(),
            wq.clone(),
            wk.clone(),
            wv.clone(),
            None,
        )
        .expect("cpu warm-up");
        let (o_cpu, st_cpu) = ConvMomentum::forward_with_state(
            q.clone(),
            k.clone(),
            v.clone(),
            wq.clone(),
            wk.clone(),
            wv.clone(),
            Some(&st0),
        )
        .expect("cpu forward");
        let init = gpu.upload_ext_state(&st0).expect("upload state");
        let up = |t: &Tok<16>| gpu.upload(t).expect("upload");
        let (gwq, gwk, gwv) = (
            gpu.upload(&wq).expect("upload"),
            gpu.upload(&wk).expect("upload"),
            gpu.upload(&wv).expect("upload"),
        );
        let (o_gpu, st_gpu) = ConvMomentum::forward_with_state_cuda(
            &up(&q),
            &up(&k),
            &up(&v),
            &gwq,
            &gwk,
            &gwv,
            Some(&init),
        )
        .expect("gpu forward");
        close("forward o", &o_gpu.download().expect("download"), &o_cpu);
        let down = st_gpu.download().expect("download");
        close("forward S", &down.s, &st_cpu.s);
        close("forward m", &down.m.expect("m"), &st_cpu.m.expect("m"));
        close("forward n", &down.n.expect("n"), &st_cpu.n.expect("n"));
    }
}
