//! Reverse-mode automatic differentiation over a tape.
//!
//! Recording lives one layer down, in [`crate::tensor`] (which does not import this module): every op whose
//! inputs require gradients records a [`Node`]: its name, its inputs (which also keeps the values its
//! backward rule needs alive) and its backward rule. Tensor ids grow in creation order, so the nodes
//! reachable from a loss, sorted by id, are exactly the Wengert list (tape) of that computation;
//! [`Tensor::backward`] walks it once in reverse, handing each node ∂L/∂output and accumulating the ∂L/∂input
//! it returns (a tensor used twice receives the sum of both contributions).
//!
//! Backward rules are written with the same ops as the forward, run with recording switched off
//! ([`no_grad`]), so a composite op needs no hand-written backward. Leaves that do not require gradients
//! (frozen weights, data) are never given a gradient buffer.

use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::shape::merge_broadcast_dims;
use crate::tensor::{self, Tensor, TensorId};
use std::collections::{HashMap, HashSet};
use std::fmt;

pub use crate::tensor::is_grad_enabled;

/// One entry of the tape (defined with [`Tensor`], which records it; named here too, beside the pass that
/// walks it).
pub type Node = tensor::Node;

/// A backward rule: ∂L/∂output in, ∂L/∂input for each input out (defined with [`Tensor`]; named here too).
pub type BackwardFn = tensor::BackwardFn;

/// Runs `f` without recording anything on the tape (evaluation, optimizer updates, backward rules).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    with_recording(false, f)
}

/// Runs `f` with recording switched on, whatever the caller's mode: how a backward rule recomputes a
/// forward whose graph it needs (see [`crate::ops::checkpoint`]).
pub fn enable_grad<R>(f: impl FnOnce() -> R) -> R {
    with_recording(true, f)
}

/// Runs `f` with recording set to `on`, restoring the caller's mode afterwards (also on a panic).
fn with_recording<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            tensor::set_grad_enabled(self.0);
        }
    }
    let _restore = Restore(tensor::set_grad_enabled(on));
    f()
}

/// Gradients of a loss with respect to the leaves that require them, keyed by tensor.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    /// ∂L/∂t, or `None` if `t` does not influence the loss or does not require gradients.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    /// Takes ∂L/∂t out of the set.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    /// Replaces (or sets) ∂L/∂t, e.g. after clipping; `g` must have `t`'s shape and device.
    pub fn set(&mut self, t: &Tensor, g: Tensor) -> Result<()> {
        if g.shape() != t.shape() {
            return Err(Error::shape(
                "Grads::set",
                format!(
                    "gradient of shape {} for a tensor of shape {}",
                    g.shape(),
                    t.shape()
                ),
            ));
        }
        t.device().check_same("Grads::set", g.device())?;
        self.map.insert(t.id(), g);
        Ok(())
    }
    /// The number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True if no leaf received a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `a + b` for two gradients of one shape: a constant, computed on the backend directly (the reverse pass
/// runs below `crate::ops` and records nothing anyway).
fn accumulate(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_device("backward", b)?;
    let layout = merge_broadcast_dims("backward", a.shape(), b.shape(), a.shape())?;
    let sum = a
        .device()
        .backend()
        .binary(BinaryOp::Add, &a.storage(), &b.storage(), &layout)?;
    Ok(Tensor::from_storage(sum, a.shape().clone(), a.device()))
}

/// All tensors with history reachable from `root`, in creation order (the tape of `root`).
fn reachable_nodes(root: &Tensor) -> Vec<Tensor> {
    let mut seen = HashSet::new();
    let mut stack = vec![root.clone()];
    let mut nodes = Vec::new();
    while let Some(t) = stack.pop() {
        if !seen.insert(t.id()) {
            continue;
        }
        if let Some(node) = t.node() {
            stack.extend(node.inputs.iter().filter(|i| i.requires_grad()).cloned());
            nodes.push(t);
        }
    }
    nodes.sort_by_key(|t| t.id());
    nodes
}

impl Tensor {
    /// Back-propagates from this one-element tensor (seed ∂L/∂L = 1) and returns the leaves' gradients.
    ///
    /// ```
    /// use liera::{Device, Tensor};
    /// let dev = Device::cpu();
    /// let x = Tensor::param(&[1.0, 2.0, 3.0], [3], &dev)?; // a trainable leaf
    /// let c = Tensor::from_slice(&[0.5, 0.5, 0.5], [3], &dev)?; // a constant
    /// // L = Σ x·x + Σ c·x: x is used twice, so its gradient is the sum 2x + c.
    /// let loss = x.mul(&x)?.sum_all()?.add(&c.mul(&x)?.sum_all()?)?;
    /// let grads = loss.backward()?;
    /// assert_eq!(grads.get(&x).unwrap().to_vec()?, vec![2.5, 4.5, 6.5]);
    /// assert!(grads.get(&c).is_none()); // constants never get a gradient
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn backward(&self) -> Result<Grads> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("the loss must have one element, got shape {}; use backward_with for other shapes", self.shape()),
            ));
        }
        let seed = Tensor::ones(self.shape().clone(), self.device())?;
        self.backward_with(&seed)
    }

    /// Back-propagates a given ∂L/∂self (same shape as `self`).
    pub fn backward_with(&self, grad: &Tensor) -> Result<Grads> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "seed gradient of shape {} for a tensor of shape {}",
                    grad.shape(),
                    self.shape()
                ),
            ));
        }
        self.check_device("backward", grad)?;
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        if !self.requires_grad() {
            return Ok(Grads { map: grads });
        }
        grads.insert(self.id(), grad.detach());
        no_grad(|| {
            for t in reachable_nodes(self).iter().rev() {
                let node = t
                    .node()
                    .expect("reachable_nodes returns tensors with nodes");
                // A node whose output never received a gradient does not lie on a path to the root.
                let Some(g) = grads.remove(&t.id()) else {
                    continue;
                };
                crate::profile::backward_node(node.op, || -> Result<()> {
                    let input_grads = (node.backward)(&g)?;
                    if input_grads.len() != node.inputs.len() {
                        return Err(Error::invalid(
                            "backward",
                            format!(
                                "rule of {} returned {} gradients for {} inputs",
                                node.op,
                                input_grads.len(),
                                node.inputs.len()
                            ),
                        ));
                    }
                    for (input, gi) in node.inputs.iter().zip(input_grads) {
                        let Some(gi) = gi else { continue };
                        if !input.requires_grad() {
                            continue;
                        }
                        if gi.shape() != input.shape() {
                            return Err(Error::shape(
                            "backward",
                            format!("rule of {} returned a gradient of shape {} for an input of shape {}", node.op, gi.shape(), input.shape()),
                        ));
                        }
                        let total = match grads.remove(&input.id()) {
                            Some(prev) => accumulate(&prev, &gi)?,
                            None => gi,
                        };
                        grads.insert(input.id(), total);
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        Ok(Grads { map: grads })
    }

    /// The tape that produced this tensor, printable op by op.
    ///
    /// ```
    /// use liera::{Device, Tensor};
    /// let dev = Device::cpu();
    /// let a = Tensor::param(&[1.0; 6], [2, 3], &dev)?;
    /// let b = Tensor::from_slice(&[0.5; 3], [3], &dev)?;
    /// let loss = a.mul(&b)?.exp()?.sum_all()?;
    /// assert_eq!(loss.tape().ops(), ["mul", "exp", "sum"]);
    /// println!("{}", loss.tape()); // #7 = mul(#1 param [2, 3], #2 const [3]) -> [2, 3] ...
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn tape(&self) -> Tape {
        Tape {
            nodes: reachable_nodes(self),
        }
    }
}

/// The recorded operations behind a tensor, in creation order. `Display` prints one line per op:
/// `#9 = mul(#3 [2, 3], #8 [2, 3]) -> [2, 3]`, marking trainable leaves as `param`.
pub struct Tape {
    nodes: Vec<Tensor>,
}

impl Tape {
    /// The number of recorded operations.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The op names in creation order.
    pub fn ops(&self) -> Vec<&'static str> {
        self.nodes
            .iter()
            .filter_map(|t| t.node().map(|n| n.op))
            .collect()
    }
}

impl fmt::Display for Tape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.nodes {
            let node = t.node().expect("tape entries have nodes");
            write!(f, "#{} = {}(", t.id(), node.op)?;
            for (i, input) in node.inputs.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                let kind = if input.is_leaf() && input.requires_grad() {
                    " param"
                } else if !input.requires_grad() {
                    " const"
                } else {
                    ""
                };
                write!(f, "#{}{} {}", input.id(), kind, input.shape())?;
            }
            writeln!(f, ") -> {}", t.shape())?;
        }
        Ok(())
    }
}
