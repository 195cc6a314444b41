use attnc::prelude::*;
#[attention(head_dim = 64, chunk = 64)]
struct Plain;
type Tok = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;
fn main() {
    let dev = Cpu::seed_from_u64(0);
    let (h, n) = (8usize, 4096usize);
    let (q, k, v): (Tok, Tok, Tok) = (
        dev.sample_normal_like(&(1, h, n, Const)),
        dev.sample_normal_like(&(1, h, n, Const)),
        dev.sample_normal_like(&(1, h, n, Const)),
    );
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    p.install(|| {
        let mut best = f64::INFINITY;
        for _ in 0..300 {
            let t0 = std::time::Instant::now();
            drop(Plain::forward(q.clone(), k.clone(), v.clone()).unwrap());
            best = best.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        println!("best {best:.3} ms");
    });
}
