//! Unit tests of the plan: every spec of a matrix plans and validates; the validator catches
//! each kind of broken plan; resolved facts (slots, places, light scans) are what the printers
//! rely on.

use super::*;
use crate::spec::{Closure, Mask, QkNorm, Update};

/// Specs over every feature map, update, mask, normaliser, qk norm, layout and chunk the
/// language allows (forbidden combinations skipped as the parser would reject them).
fn matrix() -> Vec<Spec> {
    let maps = [
        FeatureMap::Identity,
        FeatureMap::EluPlusOne,
        FeatureMap::Relu,
        FeatureMap::SquaredRelu,
        FeatureMap::Sigmoid,
        FeatureMap::Closure(Closure {
            param: "x".into(),
            body: Expr::Binary2(BinaryFn::Max, Box::new(Expr::Var), Box::new(Expr::Lit(0.5))),
        }),
        FeatureMap::Taylor2,
        FeatureMap::Dpfp { nu: 2 },
        FeatureMap::Favor { features: 32 },
        FeatureMap::Softmax,
    ];
    let updates = [
        Update::Additive,
        Update::Gated,
        Update::Delta,
        Update::GatedDelta,
    ];
    let mut specs = Vec::new();
    for map in &maps {
        for update in updates {
            for mask in [Mask::Causal, Mask::None] {
                for normalize in [Normalize::None, Normalize::Sum] {
                    for (chunk, dk, dv, qk_norm, layout) in [
                        (16, 8, 8, QkNorm::None, Layout::Bhnd),
                        (64, 16, 32, QkNorm::L2, Layout::Bnhd),
                        (256, 64, 64, QkNorm::None, Layout::Bhnd),
                    ] {
                        let delta = matches!(update, Update::Delta | Update::GatedDelta);
                        let softmax = *map == FeatureMap::Softmax;
                        if (mask == Mask::None && update != Update::Additive)
                            || (delta && normalize == Normalize::Sum)
                            || (softmax
                                && (update != Update::Additive || normalize == Normalize::Sum))
                            || (*map == FeatureMap::Taylor2 && dk > 16)
                        {
                            continue;
                        }
                        let mut s = Spec::with_head_dim(dk);
                        s.value_dim = dv;
                        s.feature_map = map.clone();
                        s.update = update;
                        s.mask = mask;
                        s.normalize = normalize;
                        s.qk_norm = qk_norm;
                        s.chunk = chunk;
                        s.layout = layout;
                        specs.push(s.clone());
                        // The systems, on the linear specs that take them.
                        if !softmax {
                            let mut c = s.clone();
                            c.short_conv = Some(4);
                            specs.push(c);
                        }
                        let additive = update == Update::Additive;
                        let favor = matches!(map, FeatureMap::Favor { .. });
                        if additive && !softmax && !favor {
                            if mask == Mask::Causal {
                                let mut m = s.clone();
                                m.momentum = Some(0.9);
                                specs.push(m);
                            }
                            let mut r = s.clone();
                            r.rpe = crate::spec::Rpe::Toeplitz;
                            specs.push(r);
                        }
                    }
                }
            }
        }
    }
    specs
}

#[test]
fn every_spec_of_the_matrix_validates() {
    let specs = matrix();
    assert!(specs.len() > 100, "matrix too small: {}", specs.len());
    for spec in &specs {
        if let Err(errors) = Plan::new(spec).validate() {
            panic!("{spec}: {errors:?}");
        }
    }
}

fn linear_cpu(plan: &mut Plan) -> &mut Linear<CpuPlace> {
    match &mut plan.cpu {
        Program::Linear(l) => l,
        Program::Softmax(_) => panic!("a linear spec"),
    }
}

fn linear_cuda(plan: &mut Plan) -> &mut Linear<CudaPlace> {
    match plan.cuda.first_mut() {
        Some((_, Program::Linear(l))) => l,
        _ => panic!("a linear spec"),
    }
}

/// The sm_90 class's program.
fn sm90(plan: &Plan) -> &Program<CudaPlace> {
    plan.cuda_for(SmemClass::Sm90)
        .expect("every class is planned")
}

fn messages(plan: &Plan) -> String {
    match plan.validate() {
        Ok(()) => String::new(),
        Err(e) => e.iter().map(|e| e.0.clone()).collect::<Vec<_>>().join("\n"),
    }
}

#[test]
fn a_tile_read_before_it_is_written_is_reported() {
    let mut plan = Plan::new(&Spec::with_head_dim(16));
    let pass = &mut linear_cpu(&mut plan).forward.passes[0];
    let load_q = pass
        .iter()
        .position(|op| matches!(op, Op::Load { src: Input::Q, .. }))
        .expect("the causal pass loads q");
    pass.remove(load_q);
    let msg = messages(&plan);
    assert!(
        msg.contains("Forward routine: op") && msg.contains("reads `q` before any op writes it"),
        "{msg}"
    );
}

#[test]
fn a_product_of_mismatched_shapes_is_reported() {
    let mut plan = Plan::new(&Spec::with_head_dim(16));
    let pass = &mut linear_cpu(&mut plan).forward.passes[0];
    for op in pass.iter_mut() {
        if let Op::MatMul { b, .. } = op {
            b.rows.n += 1;
        }
    }
    let msg = messages(&plan);
    assert!(msg.contains("(MatMul): shapes disagree"), "{msg}");
}

#[test]
fn overlapping_spill_slots_are_reported() {
    let mut spec = Spec::with_head_dim(16);
    spec.update = Update::GatedDelta;
    let mut plan = Plan::new(&spec);
    let spills = &mut linear_cpu(&mut plan).phases.spills;
    assert!(spills.slots.len() >= 2, "gated delta spills several tiles");
    spills.slots[1].1.offset = spills.slots[0].1.offset;
    let msg = messages(&plan);
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn a_fill_of_a_tile_never_spilled_is_reported() {
    let mut spec = Spec::with_head_dim(16);
    spec.update = Update::Gated;
    let mut plan = Plan::new(&spec);
    for op in &mut linear_cpu(&mut plan).phases.scan.passes[0] {
        if let Op::Fill { slot, .. } = op {
            *slot = Slot::UNASSIGNED;
        }
    }
    let msg = messages(&plan);
    assert!(msg.contains("never spilled"), "{msg}");
}

#[test]
fn shared_memory_over_the_budget_is_reported() {
    let mut plan = Plan::new(&Spec::with_head_dim(16));
    linear_cuda(&mut plan).phases.output.frame.memory.near = 227 * 1024 / 4 + 1;
    let msg = messages(&plan);
    assert!(
        msg.contains("Output routine") && msg.contains("shared memory"),
        "{msg}"
    );
}

#[test]
fn live_tiles_at_one_address_are_reported() {
    let mut plan = Plan::new(&Spec::with_head_dim(16));
    // Q and K are both read by the scores' product.
    for o in &mut linear_cuda(&mut plan).phases.output.frame.tiles {
        if matches!(o.tile, Tile::Q | Tile::K) {
            o.place = CudaPlace::Shared(0);
        }
    }
    let msg = messages(&plan);
    assert!(msg.contains("overlap while both are alive"), "{msg}");
}

#[test]
fn lifetimes_follow_the_loops() {
    let mut spec = Spec::with_head_dim(16);
    spec.feature_map = FeatureMap::Softmax;
    let plan = Plan::new(&spec);
    let Program::Softmax(t) = sm90(&plan) else {
        panic!("a softmax spec")
    };
    let life = |tile| t.frame.lifetimes[&tile];
    let loop_end = t.prologue.len() + t.body.len() + t.diagonal.len() + t.update.len() - 1;
    // Loaded before the key loop and read in it: alive to the loop's end, not its last read.
    assert_eq!(life(Tile::Q).last, loop_end);
    // CUDA's scores' product reads K in place of Kt (no transpose): K lives until it.
    assert!(t.frame.get(Tile::Kt).is_none());
    assert!(life(Tile::K).overlaps(&life(Tile::A)));
    assert!(life(Tile::Q).overlaps(&life(Tile::A)));
    // The CPU's K lives from its load to the transpose, inside one trip: K and the scores may
    // share.
    let Program::Softmax(cpu) = &plan.cpu else {
        panic!("a softmax spec")
    };
    let cpu_life = |tile| cpu.frame.lifetimes[&tile];
    assert!(!cpu_life(Tile::K).overlaps(&cpu_life(Tile::A)));
    // The carried state of a scan is alive throughout.
    let plan = Plan::new(&Spec::with_head_dim(16));
    let Program::Linear(l) = sm90(&plan) else {
        panic!("a linear spec")
    };
    assert_eq!(l.phases.scan.frame.lifetimes[&Tile::S], Lifetime::ALWAYS);
}

#[test]
fn spill_slots_are_aligned_and_packed_in_order_of_first_spill() {
    let mut spec = Spec::with_head_dim(16);
    spec.update = Update::GatedDelta;
    let plan = Plan::new(&spec);
    let Program::Linear(l) = &plan.cpu else {
        panic!("a linear spec")
    };
    let order: Vec<Tile> = l.phases.spills.slots.iter().map(|(t, _)| *t).collect();
    assert_eq!(order, [Tile::G, Tile::Kt, Tile::W, Tile::U, Tile::X]);
    for (_, slot) in &l.phases.spills.slots {
        assert_eq!(slot.offset % SLOT_ALIGN, 0);
    }
    // G (64) + Kt (16 x 64) + W (64 x 16) + U (64 x 16) + X (64 x 16).
    assert_eq!(l.phases.spills.work_per_chunk, 64 + 4 * 64 * 16);
}

#[test]
fn only_elementwise_scans_are_light() {
    for (update, light) in [
        (Update::Additive, true),
        (Update::Gated, true),
        (Update::Delta, false),
        (Update::GatedDelta, false),
    ] {
        let mut spec = Spec::with_head_dim(16);
        spec.update = update;
        let plan = Plan::new(&spec);
        let Program::Linear(l) = &plan.cpu else {
            panic!("a linear spec")
        };
        assert_eq!(l.phases.light_scan, light, "{update:?}");
    }
}

#[test]
fn cpu_tiles_are_placed_by_size_and_role() {
    let mut spec = Spec::with_head_dim(64);
    spec.chunk = 64;
    spec.normalize = Normalize::Sum;
    let plan = Plan::new(&spec);
    let Program::Linear(l) = &plan.cpu else {
        panic!("a linear spec")
    };
    let place = |f: &Frame<CpuPlace>, t| f.get(t).map(|o| o.place);
    let fwd = &l.forward.frame;
    assert_eq!(place(fwd, Tile::S), Some(CpuPlace::Task));
    assert_eq!(place(fwd, Tile::Z), Some(CpuPlace::Task));
    assert_eq!(
        place(fwd, Tile::Q),
        Some(CpuPlace::Heap),
        "64 x 64 > STACK_TILE_MAX"
    );
    assert_eq!(place(fwd, Tile::Den), Some(CpuPlace::Local));
    let step = &l.step.frame;
    assert_eq!(step.chunk, 1);
    assert_eq!(place(step, Tile::Q), Some(CpuPlace::Stack));
    let output = &l.phases.output.frame;
    assert_eq!(place(output, Tile::S), Some(CpuPlace::Heap));
    assert_eq!(place(output, Tile::Z), Some(CpuPlace::Stack));
}

#[test]
fn cuda_scan_blocks_value_columns_and_tiles_share_no_memory() {
    let mut spec = Spec::with_head_dim(64);
    spec.value_dim = 48;
    let plan = Plan::new(&spec);
    let Program::Linear(l) = sm90(&plan) else {
        panic!("a linear spec")
    };
    assert_eq!(l.phases.scan.frame.value_cols, 16);
    assert_eq!(l.phases.intra.frame.value_cols, 48);
    let s = l
        .phases
        .scan
        .frame
        .get(Tile::S)
        .expect("the scan carries S");
    assert_eq!((s.rows.n, s.cols.n), (64, 16));
}

#[test]
fn column_blocks_divide_dv() {
    assert_eq!(column_block(64), 32);
    assert_eq!(column_block(48), 16);
    assert_eq!(column_block(40), 8);
}

#[test]
fn built_in_maps_are_expressions_with_their_meaning() {
    for (map, x, want) in [
        (FeatureMap::EluPlusOne, 0.5, 1.5),
        (FeatureMap::EluPlusOne, -1.0, (-1.0f32).exp()),
        (FeatureMap::Relu, -2.0, 0.0),
        (FeatureMap::SquaredRelu, 3.0, 9.0),
        (FeatureMap::Sigmoid, 0.0, 0.5),
        (FeatureMap::Identity, 7.0, 7.0),
    ] {
        let got = elementwise(&map).eval(x);
        assert!(
            (got - want).abs() < 1e-6,
            "{map:?}({x}) = {got}, want {want}"
        );
    }
}

/// The backward's algorithm follows the attention (chunkwise for every linear update, tiles for
/// softmax); what it saves follows the sizes: one F x DV state per chunk.
#[test]
#[cfg(feature = "syn")]
fn the_backward_plan_follows_the_attention_and_the_sizes() {
    let spec = |text: &str| {
        crate::parse::parse_spec_str(text)
            .expect("a valid spec")
            .spec
    };
    let plan = |text: &str| Plan::new(&spec(text)).backward;
    let plain = plan("head_dim = 64, chunk = 64");
    assert_eq!(plain.algorithm, BackwardAlgorithm::Chunkwise);
    assert_eq!((plain.state_stride, plain.state_floats), (64, 64 * 64));
    // N = 4096: 64 chunk states of 16 KiB each, 1 MiB per (batch, head), against 16 MiB for
    // every token's state.
    assert_eq!(plain.saved_floats(4096), 64 * 64 * 64);
    let delta = plan("head_dim = 64, update = delta, qk_norm = l2, chunk = 64");
    assert_eq!(delta, plain);
    let wide = plan("head_dim = 64, feature_map = taylor2, update = delta, chunk = 64");
    // F = 2145: one 2145 x 64 state per chunk.
    assert_eq!(wide.saved_floats(4096), 64 * 2145 * 64);
    let softmax = plan("head_dim = 64, feature_map = softmax");
    assert_eq!(softmax.algorithm, BackwardAlgorithm::FlashTiles);
    assert_eq!(softmax.saved_floats(4096), 0);
}

/// The loads of one routine's passes, with whether each reads its input in place.
fn loads<P: Copy>(passes: &[Vec<ResolvedOp<P>>]) -> Vec<(Input, bool)> {
    passes
        .iter()
        .flatten()
        .filter_map(|op| match op {
            Op::Load { src, in_place, .. } => Some((*src, *in_place)),
            _ => None,
        })
        .collect()
}

#[test]
fn loads_read_in_place_only_what_the_chunk_never_writes() {
    // Plain: q is scaled in its tile (copied), k and v are only read (in place); CUDA stages
    // every tile in shared memory.
    let plan = Plan::new(&Spec::with_head_dim(64));
    let (Program::Linear(cpu), Program::Linear(cuda)) = (&plan.cpu, sm90(&plan)) else {
        panic!("a linear spec");
    };
    assert_eq!(
        loads(&cpu.forward.passes),
        [(Input::Q, false), (Input::K, true), (Input::V, true)]
    );
    assert!(loads(&cuda.forward.passes)
        .iter()
        .all(|(_, in_place)| !in_place));
    // Every spec: no op after an in-place load writes its tile, per-token inputs are copied.
    for spec in matrix() {
        let plan = Plan::new(&spec);
        let Program::Linear(l) = &plan.cpu else {
            continue;
        };
        let routines = [&l.forward, &l.step, &l.phases.intra, &l.phases.output];
        for ops in routines.iter().flat_map(|r| &r.passes) {
            for (i, op) in ops.iter().enumerate() {
                let Op::Load {
                    dst,
                    src,
                    in_place: true,
                } = op
                else {
                    continue;
                };
                assert!(!src.is_scalar(), "{spec}: a per-token input in place");
                let written = ops[i + 1..].iter().any(|o| {
                    o.operands()
                        .iter()
                        .any(|(t, a)| t.tile == dst.tile && !matches!(a, Access::Read))
                });
                assert!(
                    !written,
                    "{spec}: {:?} is written after its in-place load",
                    dst.tile
                );
            }
        }
    }
}

/// Words of a warp's 32 addresses that fall in the busiest of the 32 banks.
fn bank_ways(words: impl Iterator<Item = usize>) -> usize {
    let mut banks = vec![std::collections::BTreeSet::new(); 32];
    for w in words {
        banks[w % 32].insert(w);
    }
    banks.iter().map(|b| b.len()).max().unwrap_or(0)
}

#[test]
fn the_cuda_pitch_spreads_tensor_core_fragments_over_the_banks() {
    for cols in (8..=256).step_by(4) {
        let p = ir::cuda_pitch(cols);
        assert!(
            p >= cols && p < cols + 8 && p.is_multiple_of(4),
            "pitch {p} for {cols}"
        );
        // Lane 4g + t reads A[g][t] and B[t][g] (m16n8k8 .tf32 fragments, one register each).
        let a = bank_ways((0..32).map(|l| (l / 4) * p + l % 4));
        let b = bank_ways((0..32).map(|l| (l % 4) * p + l / 4));
        assert_eq!(a, 1, "A fragment, {cols} columns (pitch {p})");
        assert!(b <= 2, "B fragment, {cols} columns (pitch {p}): {b}-way");
    }
    // Narrow or odd widths keep their width (vectors, 4-wide tiles, odd head dims).
    for cols in [1, 3, 4, 6, 13] {
        assert_eq!(ir::cuda_pitch(cols), cols);
    }
}

#[test]
fn transposes_read_only_by_products_fold_into_them() {
    let t = |src, dst| Op::Transpose { src, dst };
    let scores = Op::MatMul {
        dst: Tile::A,
        a: Tile::Q,
        b: Tile::Kt,
        tri: crate::abi::Tri::LowerOut,
        accumulate: false,
    };
    // Kt only as a right operand, K unchanged: the transpose goes, the product reads K.
    let folded = fold_transposes(&[vec![t(Tile::K, Tile::Kt)], vec![scores.clone()]]);
    assert_eq!(folded[0], vec![]);
    assert!(matches!(
        folded[1][..],
        [Op::MatMulBt {
            a: Tile::Q,
            b: Tile::K,
            dst: Tile::A,
            ..
        }]
    ));
    // Kt also decayed (or spilled, or a left operand) after the product: the transpose moves
    // down to the decay, the product reads K.
    let decayed = Op::DecayColsToEnd {
        dst: Tile::Kt,
        gates: Tile::G,
    };
    let moved = fold_transposes(&[vec![t(Tile::K, Tile::Kt), scores.clone(), decayed.clone()]]);
    assert!(matches!(
        moved[0][..],
        [
            Op::MatMulBt { b: Tile::K, .. },
            Op::Transpose {
                src: Tile::K,
                dst: Tile::Kt
            },
            Op::DecayColsToEnd { .. }
        ]
    ));
    // Read by something else first: kept.
    let kept = vec![t(Tile::K, Tile::Kt), decayed, scores.clone()];
    assert_eq!(fold_transposes(std::slice::from_ref(&kept)), vec![kept]);
    // Never read: left alone.
    let unread = vec![t(Tile::K, Tile::Kt)];
    assert_eq!(fold_transposes(std::slice::from_ref(&unread)), vec![unread]);
    // K rewritten between the transpose and the product: kept.
    let kept = vec![
        t(Tile::K, Tile::Kt),
        Op::Scale {
            t: Tile::K,
            factor: 2.0,
        },
        scores,
    ];
    assert_eq!(fold_transposes(std::slice::from_ref(&kept)), vec![kept]);
}
