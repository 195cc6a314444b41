//! A quick probe of a few headline numbers (plain forward at H = 8, N = 4096 and H = 1,
//! N = 65536 on 1 and 2 threads; step per token and head), for iterating on a kernel change
//! without the full harness: `cargo run --release -p attnc-bench --example probe`.

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

fn main() {
    let dev = Cpu::seed_from_u64(0);
    let step_only = std::env::args().any(|a| a == "--step");
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
                    sched.run_with(|| best_ms(10, || drop(Plain::forward(&q, &k, &v).unwrap())))
                });
                let elu = p.install(|| {
                    sched.run_with(|| best_ms(10, || drop(Elu::forward(&q, &k, &v).unwrap())))
                });
                println!(
                    "H={h} N={n} {threads}t {name:6}: plain {plain:8.3} ms  elu+1 {elu:8.3} ms ({:.2}x)",
                    elu / plain
                );
            }
        }
    }
    let h = 8;
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
    println!(
        "step: {:.0} ns per token per head (H = {h})",
        ms * 1e6 / (steps * h) as f64
    );
}
