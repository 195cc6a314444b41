//! A quick probe of a few headline numbers (plain forward at H = 8, N = 4096 and H = 1,
//! N = 65536 on 1 and 2 threads; step per token and head), for iterating on a kernel change
//! without the full harness: `cargo run --release -p attnc-bench --example probe`. Each forward
//! is also shown as a multiple of `limit + copy` measured in the same run: `bench/calib`'s time
//! (scaled to the shape) plus a memcpy of the input bytes.

#[allow(dead_code)]
#[path = "../src/limits.rs"]
mod limits;

use attnc::prelude::*;
use attnc::Schedule;
use std::time::Instant;

#[attention(head_dim = 64, chunk = 64)]
struct Plain;

#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)]
struct Elu;

type Tok = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;

/// Best of `runs` calls, in milliseconds.
fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `--memory`: the growth of peak resident memory around one `forward` (inputs allocated first).
fn memory(b: usize, h: usize, n: usize) {
    let dev = Cpu::seed_from_u64(1);
    let (q, k, v): (Tok, Tok, Tok) = (
        dev.sample_normal_like(&(b, h, n, Const)),
        dev.sample_normal_like(&(b, h, n, Const)),
        dev.sample_normal_like(&(b, h, n, Const)),
    );
    let before = peak_mib();
    let o = Plain::forward(q.clone(), k.clone(), v.clone()).unwrap();
    let after = peak_mib();
    let inputs = 3.0 * (b * h * n * 64 * 4) as f64 / (1 << 20) as f64;
    println!(
        "memory B={b} H={h} N={n}: inputs {inputs:.1} MiB, +{:.1} MiB peak around forward (output {:.1} MiB)",
        after - before,
        (o.shape().0 * o.shape().1 * o.shape().2 * 64 * 4) as f64 / (1 << 20) as f64
    );
}

fn main() {
    if let Some(shape) = std::env::args().skip_while(|a| a != "--memory").nth(1) {
        let dims: Vec<usize> = shape.split(',').filter_map(|x| x.parse().ok()).collect();
        if let [b, h, n] = dims[..] {
            memory(b, h, n);
        }
        return;
    }
    let dev = Cpu::seed_from_u64(0);
    let step_only = std::env::args().any(|a| a == "--step");
    let calib = if step_only {
        Err("not run (--step)".into())
    } else {
        limits::calib()
    };
    match &calib {
        Ok(c) => println!(
            "limit (bench/calib, H=8 N=4096): 1t {:.3} ms, 2t {:.3} ms",
            c.ms[0], c.ms[1]
        ),
        Err(e) => println!("no limit: {e}"),
    }
    for (h, n) in [(8usize, 4096usize), (1, 65536)] {
        if step_only {
            break;
        }
        let (q, k, v): (Tok, Tok, Tok) = (
            dev.sample_normal_like(&(1, h, n, Const)),
            dev.sample_normal_like(&(1, h, n, Const)),
            dev.sample_normal_like(&(1, h, n, Const)),
        );
        for threads in [1, 2] {
            let p = pool(threads);
            for (name, sched) in [("auto", Schedule::Auto), ("chunks", Schedule::Chunks)] {
                let plain = p.install(|| {
                    sched.run_with(|| {
                        best_ms(10, || {
                            drop(Plain::forward(q.clone(), k.clone(), v.clone()).unwrap())
                        })
                    })
                });
                let elu = p.install(|| {
                    sched.run_with(|| {
                        best_ms(10, || {
                            drop(Elu::forward(q.clone(), k.clone(), v.clone()).unwrap())
                        })
                    })
                });
                let copy = limits::copy_ms(3 * h * n * 64, threads);
                let versus = calib.as_ref().map_or(String::new(), |c| {
                    format!(
                        "; plain / (limit + copy {copy:.2} ms) = {:.2}x",
                        plain / (c.scaled_ms(threads, h, n) + copy)
                    )
                });
                println!(
                    "H={h} N={n} {threads}t {name:6}: plain {plain:8.3} ms  elu+1 {elu:8.3} ms ({:.2}x){versus}",
                    elu / plain
                );
            }
        }
    }
    let h = std::env::var("PROBE_STEP_HEADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tok = || -> Tensor<(usize, usize, Const<64>), f32, Cpu> {
        dev.sample_normal_like(&(1, h, Const))
    };
    let (q, k, v) = (tok(), tok(), tok());
    let mut st = State::<usize, usize, 64, 64>::zeros(1, h, false).unwrap();
    let steps = 2000;
    let ms = best_ms(5, || {
        for _ in 0..steps {
            drop(Plain::step(&mut st, &q, &k, &v).unwrap());
        }
    });
    let mut dec = DecodeState::from_state(&st);
    let ms_dec = best_ms(5, || {
        for _ in 0..steps {
            drop(Plain::decode_step(&mut dec, &q, &k, &v).unwrap());
        }
    });
    let per_token_head = |ms: f64| ms * 1e6 / (steps * h) as f64;
    println!(
        "step: {:.0} ns per token per head on a State, {:.0} on a DecodeState (H = {h})",
        per_token_head(ms),
        per_token_head(ms_dec)
    );
}
