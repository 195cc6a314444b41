//! attnc's benchmark harness: one command, one run, every number side by side.
//!
//! ```sh
//! cargo run --release -p attnc-bench              # the full run (BENCHMARKS.md), ~4 minutes
//! cargo run --release -p attnc-bench -- --quick   # a smoke run at small N
//! cargo run --release -p attnc-bench -- --gpu     # the CUDA forward on GPU 0 (src/gpu.rs)
//! cargo run --release -p attnc-bench -- --gpu --arch sm_80  # sm_80's kernels on that GPU
//! ```
//!
//! Times attnc's `forward` (chunk 32, 64, 128; 1 and 2 threads), its recurrent `step` looped over
//! the sequence, exact softmax's `forward`, the quadratic masked form composed from dfdx ops,
//! softmax KV-cache decoding from dfdx ops, and the machine's limits (FMA peak, sgemm, and
//! `bench/calib`'s fused kernel built and run as a subprocess) with a memcpy of the input bytes at
//! every shape: each chunk-64 forward is also reported as a multiple of that limit plus the copy.
//! Prints markdown tables and writes `bench-out/bench.json` and SVG plots (log-log time against
//! N) into `bench-out/`.

mod baselines;
mod gpu;
mod limits;
mod report;
mod specs;
mod systems;

use report::{Report, Row};
use specs::{Inputs, Variant, CHUNKS};
use std::path::PathBuf;
use std::time::Instant;

/// Command-line options.
struct Opts {
    quick: bool,
    gpu: bool,
    arch: Option<String>,
    out: PathBuf,
    dfdx_max_n: usize,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        gpu: false,
        arch: None,
        out: PathBuf::from("bench-out"),
        dfdx_max_n: 4096,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--gpu" => o.gpu = true,
            "--arch" => o.arch = Some(args.next().ok_or("--arch needs one like sm_80")?),
            "--out" => o.out = args.next().ok_or("--out needs a folder")?.into(),
            "--dfdx-max-n" => {
                o.dfdx_max_n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--dfdx-max-n needs a number")?
            }
            other => {
                return Err(format!(
                    "unknown option {other}; use --quick, --gpu, --arch sm_XX, --out DIR, \
                     --dfdx-max-n N"
                ))
            }
        }
    }
    Ok(o)
}

/// Best time of several runs after a warm-up, in milliseconds: at least 3 runs and 0.3 s, at
/// most 10 runs (one run when a single call takes over 2 s).
fn time_ms(mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    let first = t0.elapsed().as_secs_f64();
    if first > 2.0 {
        return first * 1e3;
    }
    let (mut best, mut total, mut runs) = (f64::INFINITY, 0.0, 0);
    while runs < 10 && (runs < 3 || total < 0.3) {
        let t0 = Instant::now();
        f();
        let dt = t0.elapsed().as_secs_f64();
        best = best.min(dt);
        total += dt;
        runs += 1;
    }
    best * 1e3
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a {threads}-thread pool: {e}"))
}

fn main() {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("attnc-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        eprintln!("attnc-bench: cannot create {}: {e}", o.out.display());
        std::process::exit(2);
    }
    if o.gpu {
        match gpu::run(o.arch.as_deref()) {
            Ok(table) => {
                println!("{table}");
                if let Err(e) = std::fs::write(o.out.join("gpu.md"), &table) {
                    eprintln!("attnc-bench: cannot write gpu.md: {e}");
                }
            }
            Err(e) => {
                eprintln!("attnc-bench --gpu: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let machine = machine();
    println!("attnc-bench on {machine}");
    let mut rep = Report::default();
    let calib = measure_limits(&mut rep, o.quick);
    let ns: &[usize] = if o.quick {
        &[512, 1024]
    } else {
        &[512, 1024, 2048, 4096, 8192, 16384]
    };
    for &n in ns {
        measure_forward(&mut rep, 8, n, &o);
    }
    measure_softmax(&mut rep, if o.quick { 1024 } else { 4096 });
    measure_systems(&mut rep, if o.quick { 1024 } else { 4096 });
    let rpe_ns: &[usize] = if o.quick {
        &[1024, 2048]
    } else {
        &[1024, 2048, 4096, 8192, 16384, 32768, 65536]
    };
    for &n in rpe_ns {
        measure_rpe_curve(&mut rep, n);
    }
    let long = if o.quick { 4096 } else { 65536 };
    measure_forward(&mut rep, 1, long, &o);
    let decode_ns: &[usize] = if o.quick {
        &[1024]
    } else {
        &[1024, 4096, 16384, 65536]
    };
    for &n in decode_ns {
        measure_decode(&mut rep, n);
    }
    if let Ok(c) = &calib {
        push_ratios(&mut rep, c);
    }
    let command = format!(
        "cargo run --release -p attnc-bench{}",
        if o.quick { " -- --quick" } else { "" }
    );
    let summary = summary(&rep, &machine, &command, long, &calib);
    println!("\n{summary}");
    let write = |name: &str, text: &str| {
        if let Err(e) = std::fs::write(o.out.join(name), text) {
            eprintln!("attnc-bench: cannot write {name}: {e}");
        }
    };
    write("bench.md", &summary);
    if let Err(e) = rep.write_json(&o.out.join("bench.json"), &machine, &command) {
        eprintln!("attnc-bench: cannot write bench.json: {e}");
    }
    for v in Variant::ALL {
        let file = format!("forward-{}.svg", v.name().replace([' ', '+'], "_"));
        let title = format!("{}: forward, B = 1, H = 8, dk = dv = 64", v.name());
        if let Err(e) = rep.plot(&o.out.join(file), "forward", v.name(), 8, &title) {
            eprintln!("attnc-bench: plot: {e}");
        }
    }
    let title = "decoding: time per token per head, B = 1, H = 8, d = 64";
    if let Err(e) = rep.plot(&o.out.join("decode.svg"), "decode", "plain", 8, title) {
        eprintln!("attnc-bench: plot: {e}");
    }
    println!(
        "wrote {}/bench.md, bench.json and the SVG plots",
        o.out.display()
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev = attnc::Device::auto().map_or_else(|e| e.to_string(), |d| d.describe());
    format!("{cpu}, {threads} hardware threads; attnc: {dev}")
}

/// The FMA peak, sgemm, and calib's fused kernel (the denominator of the forward ratios), or
/// why calib could not run.
fn measure_limits(rep: &mut Report, quick: bool) -> Result<limits::Calib, String> {
    println!("\n== the machine's limits");
    let (one, isa) = limits::fma_peak_one_thread();
    let limit = |variant: String, threads: usize, value: f64| Row {
        section: "limit",
        implementation: "machine".into(),
        variant,
        b: 0,
        h: 0,
        n: 0,
        threads,
        value,
        unit: "GFLOP/s",
    };
    rep.push(limit(format!("FMA peak ({isa})"), 1, one));
    rep.push(limit(format!("FMA peak ({isa})"), 2, limits::fma_peak(2)));
    let n = if quick { 256 } else { 1024 };
    rep.push(limit(
        format!("sgemm {n}^3 (gemm crate)"),
        1,
        limits::sgemm(n, 1),
    ));
    rep.push(limit(
        format!("sgemm {n}^3 (gemm crate)"),
        2,
        limits::sgemm(n, 2),
    ));
    println!("  building and running bench/calib (the reference kernel) ...");
    let calib = limits::calib();
    match &calib {
        Ok(c) => {
            // calib's own FMA peak repeats the harness's (measured above); only its time is kept.
            for (t, &ms) in c.ms.iter().enumerate() {
                rep.push(Row {
                    section: "reference",
                    implementation: "calib v6".into(),
                    variant: "plain".into(),
                    b: 1,
                    h: limits::CALIB_HEADS,
                    n: limits::CALIB_TOKENS,
                    threads: t + 1,
                    value: ms,
                    unit: "ms",
                });
            }
        }
        Err(e) => {
            println!("  no calib limit: {e}\n  (the forward is compared with the FMA peak instead)")
        }
    }
    calib
}

/// attnc `forward` at every chunk and thread count, `step` over the sequence, and the dfdx
/// composition, for every variant at (1, h, n).
fn measure_forward(rep: &mut Report, h: usize, n: usize, o: &Opts) {
    println!("\n== forward, B = 1, H = {h}, N = {n}");
    let x = Inputs::random(1, h, n, n as u64);
    let row = |implementation: String, variant: Variant, threads: usize, ms: f64| Row {
        section: "forward",
        implementation,
        variant: variant.name().into(),
        b: 1,
        h,
        n,
        threads,
        value: ms,
        unit: "ms",
    };
    for threads in [1, 2] {
        rep.push(Row {
            section: "copy",
            implementation: "memcpy of q, k, v".into(),
            variant: "inputs".into(),
            b: 1,
            h,
            n,
            threads,
            value: limits::copy_ms(3 * h * n * 64, threads),
            unit: "ms",
        });
    }
    for v in Variant::ALL {
        for threads in [1, 2] {
            let p = pool(threads);
            for chunk in CHUNKS {
                let ms = p.install(|| {
                    time_ms(|| {
                        std::hint::black_box(specs::forward(v, chunk, &x).expect("attnc forward"));
                    })
                });
                rep.push(row(format!("attnc c{chunk}"), v, threads, ms));
            }
        }
        if h > 1 {
            // The recurrent form: `step` over the whole sequence (from a zero state).
            let tokens = specs::tokens(&x, n);
            let ms = time_ms(|| {
                let mut st = specs::St::zeros(1, h, v.normalized()).expect("state");
                for t in &tokens {
                    std::hint::black_box(specs::step(v, &mut st, t).expect("attnc step"));
                }
            });
            rep.push(row("attnc step x N".into(), v, 1, ms));
            let ms = time_ms(|| {
                let mut st = specs::Dec::zeros(1, h, v.normalized());
                for t in &tokens {
                    std::hint::black_box(specs::decode_step(v, &mut st, t).expect("decode_step"));
                }
            });
            rep.push(row("attnc decode_step x N".into(), v, 1, ms));
            if n <= o.dfdx_max_n && baselines::has_dfdx_form(v) {
                let ms = time_ms(|| {
                    std::hint::black_box(baselines::dfdx_linear(v, &x));
                });
                rep.push(row("dfdx quadratic".into(), v, 1, ms));
            }
        }
    }
}

/// Exact causal softmax attention's `forward` at B = 1, H = 8, on 1 and 2 threads.
fn measure_softmax(rep: &mut Report, n: usize) {
    println!("\n== softmax forward, B = 1, H = 8, N = {n}");
    let x = Inputs::random(1, 8, n, 7);
    for threads in [1, 2] {
        let ms = pool(threads).install(|| {
            time_ms(|| {
                std::hint::black_box(specs::softmax_forward(&x).expect("attnc softmax"));
            })
        });
        rep.push(Row {
            section: "softmax",
            implementation: "attnc c64".into(),
            variant: "softmax (causal)".into(),
            b: 1,
            h: 8,
            n,
            threads,
            value: ms,
            unit: "ms",
        });
    }
}

/// Issue #16's systems beside plain linear attention, B = 1, H = 8, chunk 64, 1 and 2 threads.
fn measure_systems(rep: &mut Report, n: usize) {
    println!("\n== systems, B = 1, H = 8, N = {n}");
    let (x, e) = (Inputs::random(1, 8, n, 3), systems::Extras::random(8, n));
    for threads in [1, 2] {
        let p = pool(threads);
        let plain = p.install(|| {
            time_ms(|| {
                std::hint::black_box(specs::forward(Variant::Plain, 64, &x).expect("forward"));
            })
        });
        let mut push = |variant: &str, ms: f64| {
            rep.push(Row {
                section: "systems",
                implementation: "attnc c64".into(),
                variant: variant.into(),
                b: 1,
                h: 8,
                n,
                threads,
                value: ms,
                unit: "ms",
            })
        };
        push("plain", plain);
        for s in systems::System::ALL {
            let ms = p.install(|| {
                time_ms(|| {
                    std::hint::black_box(systems::forward(s, &x, &e).expect("systems forward"));
                })
            });
            push(s.name(), ms);
        }
    }
}

/// Each system's time over plain linear attention's, same run, per thread count.
fn systems_ratios(rep: &Report) -> String {
    let mut s = String::new();
    for r in rep
        .rows
        .iter()
        .filter(|r| r.section == "systems" && r.variant != "plain")
    {
        let plain = rep.find("systems", "attnc c64", "plain", r.n, r.threads);
        if let Some(plain) = plain {
            s.push_str(&format!(
                "- {} / plain, N = {}, {} thread(s): {:.2}x\n",
                r.variant,
                r.n,
                r.threads,
                r.value / plain
            ));
        }
    }
    s
}

/// rpe's time per `N log2 N` against the smallest N: flat when the cost grows as N log N.
fn rpe_growth(rep: &Report) -> String {
    let rows: Vec<(usize, f64)> = rep
        .rows
        .iter()
        .filter(|r| r.section == "rpe")
        .map(|r| (r.n, r.value))
        .collect();
    let Some(&(n0, t0)) = rows.first() else {
        return String::new();
    };
    let per = |n: usize, t: f64| t / (n as f64 * (n as f64).log2());
    let mut s = String::from("\ntime / (N log2 N), relative to the first row (1.0 = N log N growth; N^2 growth would double it per doubling of N):\n\n");
    for (n, t) in rows {
        s.push_str(&format!("- N = {n}: {:.2}\n", per(n, t) / per(n0, t0)));
    }
    s
}

/// rpe's forward at B = 1, H = 1 (2 threads: the FFT pairs of one head are split over them):
/// its time against N, to read the N log N growth from.
fn measure_rpe_curve(rep: &mut Report, n: usize) {
    println!("\n== rpe, B = 1, H = 1, N = {n}");
    let (x, e) = (Inputs::random(1, 1, n, 4), systems::Extras::random(1, n));
    let ms = pool(2).install(|| {
        time_ms(|| {
            let o = systems::forward(systems::System::Rpe, &x, &e).expect("rpe");
            std::hint::black_box(o);
        })
    });
    rep.push(Row {
        section: "rpe",
        implementation: "attnc FFT".into(),
        variant: "rpe = toeplitz".into(),
        b: 1,
        h: 1,
        n,
        threads: 2,
        value: ms,
        unit: "ms",
    });
}

/// Decoding at context length `n`: attnc `step` (state after n tokens) against softmax attention
/// over a KV cache of n tokens composed from dfdx ops; nanoseconds per token per head.
fn measure_decode(rep: &mut Report, n: usize) {
    println!("\n== decode, B = 1, H = 8, context N = {n}");
    let h = 8;
    let x = Inputs::random(1, h, n, 99);
    let tokens = specs::tokens(&Inputs::random(1, h, 256, 5), 256);
    let row = |implementation: &str, variant: &str, ns: f64| Row {
        section: "decode",
        implementation: implementation.into(),
        variant: variant.into(),
        b: 1,
        h,
        n,
        threads: 1,
        value: ns,
        unit: "ns/token/head",
    };
    for v in Variant::ALL {
        let st = pool(2).install(|| specs::prefill(v, &x).expect("prefill"));
        let ms = time_ms(|| {
            let mut st = st.clone();
            for t in &tokens {
                std::hint::black_box(specs::step(v, &mut st, t).expect("step"));
            }
        });
        rep.push(row(
            "attnc step",
            v.name(),
            ms * 1e6 / (tokens.len() * h) as f64,
        ));
        let dec = specs::Dec::from_state(&st);
        let ms = time_ms(|| {
            let mut st = dec.clone();
            for t in &tokens {
                std::hint::black_box(specs::decode_step(v, &mut st, t).expect("decode_step"));
            }
        });
        rep.push(row(
            "attnc decode_step",
            v.name(),
            ms * 1e6 / (tokens.len() * h) as f64,
        ));
    }
    let cache = baselines::KvCache::random(h, n);
    let dev = dfdx::tensor::Cpu::default();
    let q: dfdx::tensor::Tensor<(usize, dfdx::shapes::Const<1>, dfdx::shapes::Const<64>), f32, _> =
        dfdx::tensor::SampleTensor::sample_normal_like(
            &dev,
            &(h, dfdx::shapes::Const, dfdx::shapes::Const),
        );
    let steps = 32;
    let ms = time_ms(|| {
        for _ in 0..steps {
            std::hint::black_box(cache.decode(&q));
        }
    });
    let ns = ms * 1e6 / (steps * h) as f64;
    // One row per variant name so the decode plot's "plain" series has the baseline next to it.
    rep.push(row("dfdx softmax KV cache", "plain", ns));
}

/// FLOPs of the plain causal chunk program at (h, n), chunk c, d = 64 (the useful ones: the
/// masked upper triangle is not counted).
fn plain_flops(h: usize, n: usize, c: usize) -> f64 {
    let d = 64.0;
    let c = c as f64;
    let per_chunk = 2.0 * (c * (c + 1.0) / 2.0 * d) * 2.0 + 2.0 * (2.0 * c * d * d);
    h as f64 * (n as f64 / c) * per_chunk
}

/// calib's time, the copies, and every forward as a multiple of `limit + copy` (or why not).
fn limit_and_copy(rep: &Report, calib: &Result<limits::Calib, String>, long: usize) -> String {
    let mut s = String::from("\n## The limit and the copy (same run, ms)\n\n");
    match calib {
        Err(e) => {
            s.push_str(&format!(
                "No limit measured: {e}. The forward is compared with the FMA peak below.\n"
            ));
            return s;
        }
        Ok(_) => s.push_str(
            "calib (`bench/calib`, its best variant, a hand-written fused kernel for plain causal \
             linear attention) at B = 1, H = 8, N = 4096, d = 64, chunk 64; the memcpy of q, k and v \
             at each shape (dfdx 0.13 lends no view of its storage, so attnc pays it).\n\n",
        ),
    }
    s.push_str(&rep.markdown("reference", 8));
    s.push_str(&format!("\nH = 8:\n\n{}", rep.markdown("copy", 8)));
    s.push_str(&format!("\nH = 1:\n\n{}", rep.markdown("copy", 1)));
    s.push_str(&format!(
        "\n## forward / (limit + copy), chunk 64 (same run)\n\n\
         The limit at other shapes is calib's time scaled by H·N / (8·4096) (its work per token is \
         constant); 1.00 would be calib's speed plus the copy.\n\n{}\nH = 1, N = {long}:\n\n{}",
        rep.markdown("ratio", 8),
        rep.markdown("ratio", 1),
    ));
    s
}

/// Every attnc c64 forward as a multiple of `limit + copy` at its (H, N) and thread count: calib's
/// time scaled to H·N tokens plus the measured copy of the input bytes.
fn push_ratios(rep: &mut Report, calib: &limits::Calib) {
    let ratios: Vec<Row> = rep
        .rows
        .iter()
        .filter(|r| r.section == "forward" && r.implementation == "attnc c64")
        .filter_map(|r| {
            let copy = rep
                .rows
                .iter()
                .find(|c| {
                    c.section == "copy" && c.h == r.h && c.n == r.n && c.threads == r.threads
                })?
                .value;
            let denominator = calib.scaled_ms(r.threads, r.h, r.n) + copy;
            Some(Row {
                section: "ratio",
                implementation: "attnc c64 / (limit + copy)".into(),
                value: r.value / denominator,
                unit: "x",
                ..r.clone()
            })
        })
        .collect();
    rep.rows.extend(ratios);
}

/// The tables and the ratios the issue asks for.
fn summary(
    rep: &Report,
    machine: &str,
    command: &str,
    long: usize,
    calib: &Result<limits::Calib, String>,
) -> String {
    let mut s = format!("# attnc-bench\n\nMachine: {machine}\n\nCommand: `{command}`\n\n");
    s.push_str("## The machine's limits\n\n");
    s.push_str(&rep.markdown("limit", 0));
    s.push_str(&limit_and_copy(rep, calib, long));
    s.push_str("\n## forward, B = 1, H = 8 (ms)\n\n");
    s.push_str(&rep.markdown("forward", 8));
    s.push_str(&format!("\n## forward, B = 1, H = 1, N = {long} (ms)\n\n"));
    s.push_str(&rep.markdown("forward", 1));
    s.push_str("\n## softmax forward, B = 1, H = 8 (ms)\n\n");
    s.push_str(&rep.markdown("softmax", 8));
    s.push_str("\n## systems (issue #16), B = 1, H = 8, chunk 64 (ms)\n\n");
    s.push_str(&rep.markdown("systems", 8));
    s.push_str(&systems_ratios(rep));
    s.push_str("\n## rpe = toeplitz against N, B = 1, H = 1, 2 threads (ms)\n\n");
    s.push_str(&rep.markdown("rpe", 1));
    s.push_str(&rpe_growth(rep));
    s.push_str("\n## decode (ns per token per head)\n\n");
    s.push_str(&rep.markdown("decode", 8));
    s.push_str("\n## Ratios (same run)\n\n");
    let n = 4096;
    let f = |imp: &str, v: Variant, t: usize| rep.find("forward", imp, v.name(), n, t);
    if let Some(plain) = f("attnc c64", Variant::Plain, 2) {
        let gflops = plain_flops(8, n, 64) / plain / 1e6;
        let peak = rep
            .rows
            .iter()
            .find(|r| r.section == "limit" && r.variant.starts_with("FMA") && r.threads == 2)
            .map_or(f64::NAN, |r| r.value);
        s.push_str(&format!(
            "- plain, N = {n}, chunk 64, 2 threads: {plain:.2} ms = {gflops:.0} GFLOP/s useful, {:.0}% of the 2-thread FMA peak\n",
            100.0 * gflops / peak
        ));
        for v in [
            Variant::Elu,
            Variant::Gated,
            Variant::Delta,
            Variant::GatedDelta,
        ] {
            if let Some(ms) = f("attnc c64", v, 2) {
                s.push_str(&format!("- {} / plain: {:.2}x\n", v.name(), ms / plain));
            }
        }
        if let Some(d) = f("dfdx quadratic", Variant::Plain, 1) {
            s.push_str(&format!(
                "- dfdx quadratic / attnc (plain): {:.0}x\n",
                d / plain
            ));
        }
        if let Some(st) = f("attnc step x N", Variant::Plain, 1) {
            s.push_str(&format!(
                "- step x N / forward (plain): {:.1}x\n",
                st / plain
            ));
        }
    }
    for t in [1, 2] {
        let soft = rep
            .rows
            .iter()
            .find(|r| r.section == "softmax" && r.threads == t);
        let peak = rep.rows.iter().find(|r| {
            r.section == "limit" && r.variant.starts_with("FMA peak (") && r.threads == t
        });
        if let (Some(soft), Some(peak)) = (soft, peak) {
            // Useful FLOPs of the causal half: 2 N^2 d per head (scores and values, halved).
            let flops = 2.0 * (soft.n * soft.n * 64 * soft.h) as f64;
            let gflops = flops / soft.value / 1e6;
            s.push_str(&format!(
                "- softmax (causal), N = {}, {t} thread(s): {:.2} ms = {gflops:.0} GFLOP/s useful, {:.0}% of the FMA peak\n",
                soft.n,
                soft.value,
                100.0 * gflops / peak.value
            ));
        }
    }
    let long_f = |t: usize| rep.find("forward", "attnc c64", Variant::Plain.name(), long, t);
    if let (Some(one), Some(two)) = (long_f(1), long_f(2)) {
        s.push_str(&format!(
            "- B = 1, H = 1, N = {long}, plain: 1 thread {one:.2} ms, 2 threads {two:.2} ms: {:.2}x\n",
            one / two
        ));
    }
    let dec = |imp: &str, v: &str, n: usize| rep.find("decode", imp, v, n, 1);
    for n in [1024, 65536] {
        if let (Some(lin), Some(fast), Some(soft)) = (
            dec("attnc step", "plain", n),
            dec("attnc decode_step", "plain", n),
            dec("dfdx softmax KV cache", "plain", n),
        ) {
            s.push_str(&format!(
                "- decode at N = {n}: attnc step {lin:.0} ns, decode_step {fast:.0} ns vs softmax KV cache {soft:.0} ns per token per head ({:.0}x, {:.0}x)\n",
                soft / lin,
                soft / fast
            ));
        }
    }
    s
}
