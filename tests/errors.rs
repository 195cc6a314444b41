//! Bad arguments return `attnc::Error` with a message that says what to do — never a panic.

use attnc::prelude::*;

#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
pub struct Attn;

#[attention(head_dim = 16, update = gated, layout = bnhd, chunk = 16)]
pub struct GatedTokensFirst;

type Tok = Tensor<(usize, usize, usize, Const<16>), f32, Cpu>;

fn tok(b: usize, h: usize, n: usize) -> Tok {
    Cpu::default().sample_normal_like(&(b, h, n, Const))
}

#[test]
fn mismatched_token_counts_are_an_error() {
    let err = Attn::forward(tok(1, 2, 10), tok(1, 2, 11), tok(1, 2, 10)).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "k", .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("`k` has shape [1, 2, 11, 16] but [1, 2, 10, 16] was expected"),
        "{msg}"
    );
}

#[test]
fn mismatched_heads_are_an_error() {
    let err = Attn::forward(tok(1, 2, 10), tok(1, 2, 10), tok(1, 3, 10)).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "v", .. }),
        "{err}"
    );
}

#[test]
fn empty_sequence_is_an_error() {
    let err = Attn::forward(tok(1, 2, 0), tok(1, 2, 0), tok(1, 2, 0)).unwrap_err();
    assert_eq!(err, Error::EmptySequence);
    assert!(err.to_string().contains("pass at least one token"));
}

#[test]
fn gate_shape_follows_the_layout() {
    // Tokens first: q is (B, N, H, D) and g must be (B, N, H).
    let q = tok(1, 10, 2);
    let good: Tensor<(usize, usize, usize), f32, Cpu> = Cpu::default().zeros_like(&(1, 10, 2));
    assert!(GatedTokensFirst::forward(q.clone(), q.clone(), q.clone(), good.clone()).is_ok());
    let bad: Tensor<(usize, usize, usize), f32, Cpu> = Cpu::default().zeros_like(&(1, 2, 10));
    let err = GatedTokensFirst::forward(q.clone(), q.clone(), q.clone(), bad.clone()).unwrap_err();
    assert!(
        err.to_string().contains("`g` has shape [1, 2, 10]"),
        "{err}"
    );
    assert!(err.to_string().contains("(B, N, H)"), "{err}");
}

#[test]
fn state_of_the_wrong_batch_is_an_error() {
    let (_, state) =
        Attn::forward_with_state(tok(2, 2, 5), tok(2, 2, 5), tok(2, 2, 5), None).unwrap();
    let err = Attn::forward_with_state(tok(1, 2, 5), tok(1, 2, 5), tok(1, 2, 5), Some(&state))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StateMismatch {
                batch: 1,
                got_batch: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn state_without_normaliser_is_an_error_for_a_normalised_spec() {
    let state = State::zeros(1usize, 2usize, false).unwrap();
    let err = Attn::forward_with_state(tok(1, 2, 5), tok(1, 2, 5), tok(1, 2, 5), Some(&state))
        .unwrap_err();
    assert!(err.to_string().contains("needs `z`"), "{err}");
}

#[test]
fn step_with_mismatched_heads_is_an_error() {
    let mut state = State::zeros(1usize, 2usize, true).unwrap();
    let dev = Cpu::default();
    let x: Tensor<(usize, usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(1, 2, Const));
    let y: Tensor<(usize, usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(1, 3, Const));
    assert!(Attn::step(&mut state, &x, &x, &x).is_ok());
    let err = Attn::step(&mut state, &x, &y, &x).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "k_t", .. }),
        "{err}"
    );
}

#[test]
fn non_finite_inputs_are_rejected_when_checking_is_on() {
    let data = vec![f32::NAN; 16 * 3];
    let bad: Tok = Cpu::default().tensor_from_vec(data, (1, 1, 3, Const));
    let good = tok(1, 1, 3);
    attnc::set_finite_check(true);
    let err = Attn::forward(bad.clone(), good.clone(), good.clone()).unwrap_err();
    attnc::set_finite_check(false);
    assert_eq!(err, Error::NonFinite { arg: "q", index: 0 });
}

#[test]
fn unknown_isa_names_are_an_error() {
    let err = attnc::CpuIsa::from_name("sse9").unwrap_err();
    assert!(
        err.to_string().contains("use portable, avx2 or avx512"),
        "{err}"
    );
}

#[test]
fn forced_isa_is_used_by_a_child_process() {
    // ATTNC_CPU_ISA is read once per process: check it in a child running the quickstart's
    // device report through this test binary's own `describe_device` test below.
    let exe = std::env::current_exe().unwrap();
    for isa in attnc::CpuIsa::available() {
        let out = std::process::Command::new(&exe)
            .args([
                "describe_device_child",
                "--exact",
                "--nocapture",
                "--include-ignored",
            ])
            .env("ATTNC_CPU_ISA", isa.name())
            .env("ATTNC_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("CPU ({isa},")), "{isa}: {text}");
        assert!(text.contains("forced by ATTNC_CPU_ISA"), "{text}");
    }
}

#[test]
#[ignore = "run as a child process by forced_isa_is_used_by_a_child_process"]
fn describe_device_child() {
    if std::env::var("ATTNC_CHILD").is_ok() {
        println!("{}", attnc::Device::auto().unwrap().describe());
    }
}

/// `fn main() -> Result<(), attnc::Error>` prints an error with `Debug`: it shows the message,
/// not the bare variant name.
#[test]
fn debug_shows_the_message() {
    let err = Attn::forward(tok(1, 2, 0), tok(1, 2, 0), tok(1, 2, 0)).unwrap_err();
    assert_eq!(
        format!("{err:?}"),
        "the sequence is empty (N = 0): pass at least one token"
    );
}

/// An empty state built from the spec has the normaliser exactly when the spec normalises.
#[test]
fn zero_states_follow_the_spec() {
    let with_z = Attn::zero_state(1, 2).unwrap();
    assert!(with_z
        .z
        .is_some_and(|z| z.as_vec().iter().all(|&x| x == 0.0)));
    assert!(with_z.s.as_vec().iter().all(|&x| x == 0.0));
    let without_z = GatedTokensFirst::zero_state(1, 2).unwrap();
    assert!(without_z.z.is_none());
    let decode = GatedTokensFirst::zero_decode_state(3, 2);
    assert_eq!(
        (decode.batch(), decode.heads(), decode.z().is_none()),
        (3, 2, true)
    );
}
