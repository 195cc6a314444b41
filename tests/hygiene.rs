//! Specs named like the generated code's own identifiers (the chunk constant `C`, the type
//! parameters `B`, `H`, `N`, `T` of the `Module` impl): the expansion must not let them shadow
//! each other. Each forward is checked against the same spec under an ordinary name.

use attnc::prelude::*;
use dfdx::nn::Module;

/// The chunk program's constant is `C`.
#[attention(head_dim = 16, chunk = 16)]
struct C;
/// `T` is q's tape in the `Module` impl.
#[attention(head_dim = 16, chunk = 16)]
struct T;
/// `B`, `H`, `N` are the axes' type parameters.
#[attention(head_dim = 16, update = momentum(mu = 0.5), chunk = 16)]
struct N;
/// The same spec as `C` and `T`, named plainly.
#[attention(head_dim = 16, chunk = 16)]
struct Plain;
/// The same spec as `N`, named plainly.
#[attention(head_dim = 16, update = momentum(mu = 0.5), chunk = 16)]
struct Momentum;

#[test]
fn specs_named_like_generated_identifiers_compile_and_agree() {
    let dev = Cpu::seed_from_u64(1);
    let x: Tensor<Rank4<1, 2, 37, 16>, f32, _> = dev.sample_normal();
    let want = Plain::forward(x.clone(), x.clone(), x.clone())
        .unwrap()
        .as_vec();
    assert_eq!(
        C::forward(x.clone(), x.clone(), x.clone())
            .unwrap()
            .as_vec(),
        want
    );
    assert_eq!(
        T.try_forward((x.clone(), x.clone(), x.clone()))
            .unwrap()
            .as_vec(),
        want
    );
    let want = Momentum::forward(x.clone(), x.clone(), x.clone())
        .unwrap()
        .as_vec();
    assert_eq!(
        N.try_forward((x.clone(), x.clone(), x.clone()))
            .unwrap()
            .as_vec(),
        want
    );
}
