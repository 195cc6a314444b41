//! The spec as a Rust expression: one `ToTokens` per spec type, so the generated `spec()` rebuilds
//! the parsed [`Spec`] at run time. Every variant is spelled explicitly (no names from `Debug`).

use crate::spec::*;
use proc_macro2::{Literal, TokenStream};
use quote::{quote, ToTokens};

fn path() -> TokenStream {
    quote!(::attnc::spec)
}

impl ToTokens for Spec {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        let [dk, dv, chunk] =
            [self.head_dim, self.value_dim, self.chunk].map(Literal::usize_unsuffixed);
        let Spec {
            feature_map,
            mask,
            update,
            normalize,
            qk_norm,
            scale,
            layout,
            heads,
            momentum,
            short_conv,
            rpe,
            precision,
            ..
        } = self;
        let precision = match precision {
            Precision::Fp32 => quote!(#s::Precision::Fp32),
            Precision::Tf32 => quote!(#s::Precision::Tf32),
        };
        let momentum = match momentum {
            Some(mu) => {
                let mu = Literal::f32_suffixed(*mu);
                quote!(::core::option::Option::Some(#mu))
            }
            None => quote!(::core::option::Option::None),
        };
        let short_conv = match short_conv {
            Some(w) => {
                let w = Literal::usize_unsuffixed(*w);
                quote!(::core::option::Option::Some(#w))
            }
            None => quote!(::core::option::Option::None),
        };
        let rpe = match rpe {
            Rpe::None => quote!(#s::Rpe::None),
            Rpe::Toeplitz => quote!(#s::Rpe::Toeplitz),
        };
        let heads = match heads {
            Some(h) => {
                let h = Literal::usize_unsuffixed(*h);
                quote!(::core::option::Option::Some(#h))
            }
            None => quote!(::core::option::Option::None),
        };
        let layout = match layout {
            Layout::Bhnd => quote!(#s::Layout::Bhnd),
            Layout::Bnhd => quote!(#s::Layout::Bnhd),
        };
        out.extend(quote! {
            #s::Spec {
                head_dim: #dk,
                value_dim: #dv,
                feature_map: #feature_map,
                mask: #mask,
                update: #update,
                normalize: #normalize,
                qk_norm: #qk_norm,
                scale: #scale,
                chunk: #chunk,
                layout: #layout,
                heads: #heads,
                momentum: #momentum,
                short_conv: #short_conv,
                rpe: #rpe,
                precision: #precision,
            }
        });
    }
}

impl ToTokens for FeatureMap {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            FeatureMap::Identity => quote!(#s::FeatureMap::Identity),
            FeatureMap::EluPlusOne => quote!(#s::FeatureMap::EluPlusOne),
            FeatureMap::Relu => quote!(#s::FeatureMap::Relu),
            FeatureMap::SquaredRelu => quote!(#s::FeatureMap::SquaredRelu),
            FeatureMap::Sigmoid => quote!(#s::FeatureMap::Sigmoid),
            FeatureMap::Taylor2 => quote!(#s::FeatureMap::Taylor2),
            FeatureMap::Softmax => quote!(#s::FeatureMap::Softmax),
            FeatureMap::Dpfp { nu } => {
                let nu = Literal::usize_unsuffixed(*nu);
                quote!(#s::FeatureMap::Dpfp { nu: #nu })
            }
            FeatureMap::Favor { features } => {
                let m = Literal::usize_unsuffixed(*features);
                quote!(#s::FeatureMap::Favor { features: #m })
            }
            FeatureMap::Closure(c) => {
                let (param, body) = (Literal::string(&c.param), &c.body);
                quote!(#s::FeatureMap::Closure(#s::Closure {
                    param: ::std::string::String::from(#param),
                    body: #body,
                }))
            }
        });
    }
}

impl ToTokens for Mask {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            Mask::Causal => quote!(#s::Mask::Causal),
            Mask::None => quote!(#s::Mask::None),
        });
    }
}

impl ToTokens for Update {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            Update::Additive => quote!(#s::Update::Additive),
            Update::Gated => quote!(#s::Update::Gated),
            Update::Delta => quote!(#s::Update::Delta),
            Update::GatedDelta => quote!(#s::Update::GatedDelta),
        });
    }
}

impl ToTokens for Normalize {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            Normalize::None => quote!(#s::Normalize::None),
            Normalize::Sum => quote!(#s::Normalize::Sum),
        });
    }
}

impl ToTokens for QkNorm {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            QkNorm::None => quote!(#s::QkNorm::None),
            QkNorm::L2 => quote!(#s::QkNorm::L2),
        });
    }
}

impl ToTokens for Scale {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            Scale::Auto => quote!(#s::Scale::Auto),
            Scale::Value(v) => {
                let v = Literal::f32_suffixed(*v);
                quote!(#s::Scale::Value(#v))
            }
        });
    }
}

impl ToTokens for Expr {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        let boxed = |e: &Expr| quote!(::std::boxed::Box::new(#e));
        out.extend(match self {
            Expr::Var => quote!(#s::Expr::Var),
            Expr::Lit(v) => {
                let v = Literal::f32_suffixed(*v);
                quote!(#s::Expr::Lit(#v))
            }
            Expr::Neg(a) => {
                let a = boxed(a);
                quote!(#s::Expr::Neg(#a))
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (boxed(a), boxed(b));
                quote!(#s::Expr::Binary(#op, #a, #b))
            }
            Expr::Unary(f, a) => {
                let a = boxed(a);
                quote!(#s::Expr::Unary(#f, #a))
            }
            Expr::Binary2(f, a, b) => {
                let (a, b) = (boxed(a), boxed(b));
                quote!(#s::Expr::Binary2(#f, #a, #b))
            }
            Expr::Powi(a, n) => {
                let (a, n) = (boxed(a), Literal::i32_suffixed(*n));
                quote!(#s::Expr::Powi(#a, #n))
            }
            Expr::If {
                cond,
                then,
                otherwise,
            } => {
                let Cond { op, lhs, rhs } = &**cond;
                let (t, o) = (boxed(then), boxed(otherwise));
                quote!(#s::Expr::If {
                    cond: ::std::boxed::Box::new(#s::Cond { op: #op, lhs: #lhs, rhs: #rhs }),
                    then: #t,
                    otherwise: #o,
                })
            }
        });
    }
}

impl ToTokens for BinOp {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            BinOp::Add => quote!(#s::BinOp::Add),
            BinOp::Sub => quote!(#s::BinOp::Sub),
            BinOp::Mul => quote!(#s::BinOp::Mul),
            BinOp::Div => quote!(#s::BinOp::Div),
        });
    }
}

impl ToTokens for UnaryFn {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            UnaryFn::Exp => quote!(#s::UnaryFn::Exp),
            UnaryFn::Ln => quote!(#s::UnaryFn::Ln),
            UnaryFn::Sqrt => quote!(#s::UnaryFn::Sqrt),
            UnaryFn::Abs => quote!(#s::UnaryFn::Abs),
            UnaryFn::Tanh => quote!(#s::UnaryFn::Tanh),
        });
    }
}

impl ToTokens for BinaryFn {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            BinaryFn::Max => quote!(#s::BinaryFn::Max),
            BinaryFn::Min => quote!(#s::BinaryFn::Min),
            BinaryFn::Powf => quote!(#s::BinaryFn::Powf),
        });
    }
}

impl ToTokens for CmpOp {
    fn to_tokens(&self, out: &mut TokenStream) {
        let s = path();
        out.extend(match self {
            CmpOp::Lt => quote!(#s::CmpOp::Lt),
            CmpOp::Le => quote!(#s::CmpOp::Le),
            CmpOp::Gt => quote!(#s::CmpOp::Gt),
            CmpOp::Ge => quote!(#s::CmpOp::Ge),
            CmpOp::Eq => quote!(#s::CmpOp::Eq),
            CmpOp::Ne => quote!(#s::CmpOp::Ne),
        });
    }
}
