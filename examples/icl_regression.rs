//! In-context linear regression with a 3-layer linear transformer, trained through attnc's
//! backward on dfdx's tape: the setting of "Linear attention is (maybe) all you need" (Ahn et al.,
//! 2023) and of von Oswald et al. (2023).
//!
//! Each prompt holds 20 examples (x_i, y_i) with x_i ~ N(0, I_5), y_i = w . x_i for a fresh
//! w ~ N(0, I_5), then a query x_q whose label the model predicts. Tokens are z_i = [x_i, y_i, 0, 0]
//! (width 8, attnc's smallest head) and z_q = [x_q, 0, 0, 0, 0]. Each layer adds causal linear
//! attention (identity feature map, no normaliser, scale 1/20) to the residual stream,
//! Z <- Z + Attn(Z W_q, (Z W_k) * m, Z W_v), where the mask m zeroes the query token's key, so the
//! query's label slot never enters the state. The prediction is the query's label slot after
//! three layers; the loss its squared error. Fresh prompts every step.
//!
//! Trained once with Adam and once with SGD at step sizes tuned by a sweep (see the README); the
//! loss curves are printed and drawn into `icl_regression.svg`. The trivial predictor (always 0)
//! has loss E[y^2] = d = 5.
//!
//! `cargo run --release --example icl_regression`

use attnc::prelude::*;
use dfdx::nn::builders::UnbiasedLinear;
use dfdx::nn::{DeviceBuildExt, Module, ZeroGrads};
use dfdx::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use dfdx::tensor::SampleTensor;
use dfdx::tensor::{NoneTape, OwnedTape, Trace};
use dfdx::tensor_ops::{Backward, MeanTo, ReshapeTo, SumTo};
use plotters::prelude::*;

/// One layer's attention: causal, identity map, no normaliser, width 8.
#[attention(head_dim = 8, scale = 0.05, chunk = 32)]
struct IclAttention;

const D: usize = 5;
const EXAMPLES: usize = 20;
const TOKENS: usize = EXAMPLES + 1;
const BATCH: usize = 64;
const STEPS: usize = 2000;

type Layer = (
    UnbiasedLinear<8, 8>,
    UnbiasedLinear<8, 8>,
    UnbiasedLinear<8, 8>,
);
type Model = (Layer, Layer, Layer);
type Built = <Model as dfdx::nn::BuildOnDevice<Cpu, f32>>::Built;
type Stream<T> = Tensor<(usize, usize, Const<8>), f32, Cpu, T>;

/// A batch of fresh prompts: the tokens (B, N, 8), the key mask and the query labels (B).
struct Prompts {
    z: Stream<NoneTape>,
    key_mask: Stream<NoneTape>,
    readout: Stream<NoneTape>,
    labels: Tensor<(usize,), f32, Cpu>,
}

fn prompts(dev: &Cpu) -> Prompts {
    let x: Tensor<(usize, usize, Const<D>), f32, Cpu> =
        dev.sample_normal_like(&(BATCH, TOKENS, Const));
    let w: Tensor<(usize, Const<D>), f32, Cpu> = dev.sample_normal_like(&(BATCH, Const));
    let (x, w) = (x.as_vec(), w.as_vec());
    let mut z = vec![0.0f32; BATCH * TOKENS * 8];
    let mut mask = vec![1.0f32; BATCH * TOKENS * 8];
    let mut readout = vec![0.0f32; BATCH * TOKENS * 8];
    let mut labels = vec![0.0f32; BATCH];
    for b in 0..BATCH {
        for i in 0..TOKENS {
            let xi = &x[(b * TOKENS + i) * D..(b * TOKENS + i + 1) * D];
            let y: f32 = xi
                .iter()
                .zip(&w[b * D..(b + 1) * D])
                .map(|(a, c)| a * c)
                .sum();
            let row = (b * TOKENS + i) * 8;
            z[row..row + D].copy_from_slice(xi);
            if i < EXAMPLES {
                z[row + D] = y;
            } else {
                labels[b] = y;
                mask[row..row + 8].fill(0.0);
                readout[row + D] = 1.0;
            }
        }
    }
    let shape = (BATCH, TOKENS, Const::<8>);
    Prompts {
        z: dev.tensor_from_vec(z, shape),
        key_mask: dev.tensor_from_vec(mask, shape),
        readout: dev.tensor_from_vec(readout, shape),
        labels: dev.tensor_from_vec(labels, (BATCH,)),
    }
}

/// One layer: Z + Attn(Z W_q, (Z W_k) * m, Z W_v).
fn layer(
    l: &<Layer as dfdx::nn::BuildOnDevice<Cpu, f32>>::Built,
    z: Stream<OwnedTape<f32, Cpu>>,
    key_mask: &Stream<NoneTape>,
) -> Result<Stream<OwnedTape<f32, Cpu>>, attnc::Error> {
    let heads = (BATCH, Const::<1>, TOKENS, Const::<8>);
    let q = l.0.forward(z.retaped::<OwnedTape<f32, Cpu>>());
    let k = l.1.forward(z.retaped::<OwnedTape<f32, Cpu>>()) * key_mask.clone();
    let v = l.2.forward(z.retaped::<OwnedTape<f32, Cpu>>());
    let o = IclAttention::forward(
        q.reshape_like(&heads),
        k.reshape_like(&heads),
        v.reshape_like(&heads),
    )?;
    Ok(z + o.reshape_like(&(BATCH, TOKENS, Const::<8>)))
}

/// The batch's mean squared error of the query predictions, traced into `grads`.
fn loss(
    model: &Built,
    p: &Prompts,
    grads: dfdx::tensor::Gradients<f32, Cpu>,
) -> Result<Tensor<Rank0, f32, Cpu, OwnedTape<f32, Cpu>>, attnc::Error> {
    let mut z = p.z.clone().traced(grads);
    for l in [&model.0, &model.1, &model.2] {
        z = layer(l, z, &p.key_mask)?;
    }
    let pred = (z * p.readout.clone()).sum::<(usize,), dfdx::shapes::Axes2<1, 2>>();
    let err = pred - p.labels.clone();
    Ok(err.square().mean::<Rank0, _>())
}

/// A model with small weights (N(0, 0.05^2) entries): three layers multiply, so dfdx's default
/// initialisation (uniform up to 1/sqrt(8)) starts with losses in the thousands.
fn fresh_model(seed: u64) -> Built {
    let dev = Cpu::seed_from_u64(seed);
    let mut model = dev.build_module::<Model, f32>();
    let small = || dev.sample_normal::<Rank2<8, 8>>() * 0.05;
    for l in [&mut model.0, &mut model.1, &mut model.2] {
        l.0.weight = small();
        l.1.weight = small();
        l.2.weight = small();
    }
    model
}

type Grads = dfdx::tensor::Gradients<f32, Cpu>;

/// Trains `model` for `steps` steps, calling `step` after each backward; returns every loss.
fn train(
    dev: &Cpu,
    name: &str,
    model: &mut Built,
    steps: usize,
    mut step: impl FnMut(&mut Built, &Grads),
) -> Result<Vec<f32>, attnc::Error> {
    let mut grads = model.alloc_grads();
    let mut curve = Vec::with_capacity(steps);
    for i in 0..steps {
        let p = prompts(dev);
        let l = loss(model, &p, grads)?;
        curve.push(l.array());
        grads = l.backward();
        step(model, &grads);
        model.zero_grads(&mut grads);
        if (i + 1) % 200 == 0 && !name.is_empty() {
            let recent = &curve[i + 1 - 200..];
            println!(
                "{name} step {:>5}: mean loss of the last 200 steps {:.3}",
                i + 1,
                recent.iter().sum::<f32>() / 200.0
            );
        }
    }
    Ok(curve)
}

/// Means over windows of 50 steps, for the plot.
fn smooth(curve: &[f32]) -> Vec<(f32, f32)> {
    curve
        .chunks(50)
        .enumerate()
        .map(|(i, c)| {
            (
                (i * 50 + c.len()) as f32,
                c.iter().sum::<f32>() / c.len() as f32,
            )
        })
        .collect()
}

fn plot(curves: &[(&str, &[f32], RGBColor)], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "in-context linear regression (d = 5, 20 examples)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f32..STEPS as f32, (0.01f32..20f32).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (mean of 50 steps)")
        .draw()?;
    let trivial = [(0.0, D as f32), (STEPS as f32, D as f32)];
    chart
        .draw_series(LineSeries::new(trivial, BLACK.stroke_width(1)))?
        .label("trivial predictor (d)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    for &(name, curve, color) in curves {
        chart
            .draw_series(LineSeries::new(smooth(curve), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Trains with Adam (`adam`) or SGD at step size `lr`; returns every step's loss.
fn run(dev: &Cpu, name: &str, adam: bool, lr: f64, steps: usize) -> Result<Vec<f32>, attnc::Error> {
    let mut model = fresh_model(1);
    if adam {
        let mut opt = Adam::new(
            &model,
            AdamConfig {
                lr,
                ..Default::default()
            },
        );
        train(dev, name, &mut model, steps, |m, g| {
            opt.update(m, g).expect("gradients")
        })
    } else {
        let cfg = SgdConfig {
            lr,
            momentum: None,
            weight_decay: None,
        };
        let mut opt = Sgd::new(&model, cfg);
        train(dev, name, &mut model, steps, |m, g| {
            opt.update(m, g).expect("gradients")
        })
    }
}

/// Mean of the last 200 losses (NaN stays NaN: a diverged run).
fn tail(c: &[f32]) -> f32 {
    let last = &c[c.len().saturating_sub(200)..];
    last.iter().sum::<f32>() / last.len() as f32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Cpu::seed_from_u64(0);
    if std::env::args().any(|a| a == "--sweep") {
        // The sweep behind ADAM_LR and SGD_LR: 1000 steps each, the last 200 averaged.
        for (adam, lrs) in [(true, ADAM_SWEEP), (false, SGD_SWEEP)] {
            for &lr in lrs {
                let c = run(&dev, "", adam, lr, 1000)?;
                let name = if adam { "adam" } else { "sgd" };
                println!("sweep {name} lr {lr:e}: final loss {:.3}", tail(&c));
            }
        }
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let adam_curve = run(&dev, "adam", true, ADAM_LR, STEPS)?;
    let sgd_curve = run(&dev, "sgd", false, SGD_LR, STEPS)?;
    println!(
        "final loss (mean of the last 200 steps): adam {:.3}, sgd {:.3}; trivial predictor {D}",
        tail(&adam_curve),
        tail(&sgd_curve)
    );
    plot(
        &[("Adam", &adam_curve, RED), ("SGD", &sgd_curve, BLUE)],
        "icl_regression.svg",
    )?;
    println!(
        "wrote icl_regression.svg in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

const ADAM_SWEEP: &[f64] = &[3e-4, 1e-3, 3e-3, 1e-2];
const SGD_SWEEP: &[f64] = &[1e-3, 3e-3, 1e-2, 3e-2, 1e-1];

/// Adam's step size, the best of [`ADAM_SWEEP`] (`-- --sweep`).
const ADAM_LR: f64 = 3e-3;
/// SGD's step size, the best of [`SGD_SWEEP`] (`-- --sweep`).
const SGD_LR: f64 = 1e-2;
