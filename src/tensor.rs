//! [`Tensor`]: a shape, a storage handle on a device, and (when it was computed from tensors that require
//! gradients) the tape [`Node`] that produced it.
//!
//! This is the recording half of autodiff: [`Tensor::from_op`] records a node while recording is on
//! ([`is_grad_enabled`]). The reverse pass over those nodes (`Tensor::backward`, `Grads`, `Tape`,
//! `no_grad`) lives in `crate::autodiff`, a layer above, which this module does not import.

use crate::backend::{Device, Storage};
use crate::error::{Error, Result};
use crate::shape::Shape;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A backward rule: ∂L/∂output in, ∂L/∂input for each input out (`None`: no gradient for that input).
pub type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// One entry of the tape: how a tensor was computed.
pub struct Node {
    /// The op's name, as printed on the tape.
    pub op: &'static str,
    /// The op's tensor inputs, in order.
    pub inputs: Vec<Tensor>,
    /// The backward rule.
    pub backward: BackwardFn,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True unless recording is switched off on this thread (inside `crate::autodiff::no_grad`).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Switches recording on this thread on or off and returns the previous setting (`no_grad` restores it).
pub(crate) fn set_grad_enabled(enabled: bool) -> bool {
    GRAD_ENABLED.with(|g| g.replace(enabled))
}

/// A tensor's identity: unique, and increasing in creation order (so sorting by id sorts the tape).
pub type TensorId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> TensorId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

struct TensorInner {
    id: TensorId,
    shape: Shape,
    /// Behind a lock only so that [`Tensor::assign`] can update a parameter in place; storages themselves
    /// are immutable and shared.
    storage: RwLock<Storage>,
    device: Device,
    requires_grad: bool,
    node: Option<Arc<Node>>,
}

/// An n-dimensional f32 array on a [`Device`]. Cloning is cheap and shares the data.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl Tensor {
    fn build(
        shape: Shape,
        storage: Storage,
        device: Device,
        requires_grad: bool,
        node: Option<Arc<Node>>,
    ) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: next_id(),
            shape,
            storage: RwLock::new(storage),
            device,
            requires_grad,
            node,
        }))
    }

    /// A constant tensor from host data; errors if `data.len()` is not the shape's element count.
    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape(
                "from_slice",
                format!(
                    "{} values cannot fill shape {shape} ({} elements)",
                    data.len(),
                    shape.numel()
                ),
            ));
        }
        let storage = device.backend().upload(data)?;
        Ok(Tensor::build(shape, storage, device.clone(), false, None))
    }
    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Shape>, value: f32, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let storage = device.backend().fill(shape.numel(), value)?;
        Ok(Tensor::build(shape, storage, device.clone(), false, None))
    }
    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, device)
    }
    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, device)
    }
    /// A rank-0 tensor holding `value`.
    pub fn scalar(value: f32, device: &Device) -> Result<Tensor> {
        Tensor::full(Shape::scalar(), value, device)
    }
    /// A constant over an existing storage (no history, no gradient).
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>, device: &Device) -> Tensor {
        Tensor::build(shape.into(), storage, device.clone(), false, None)
    }
    /// A trainable leaf (requires gradients) from host data.
    ///
    /// ```
    /// use liera::{Device, Tensor};
    /// let w = Tensor::param(&[1.0, -2.0], [2], &Device::cpu())?;
    /// assert!(w.requires_grad() && w.is_leaf());
    /// let y = w.mul_scalar(3.0)?; // recorded on the tape because w requires gradients
    /// assert!(y.requires_grad() && !y.is_leaf());
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn param(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, shape, device)?.to_param())
    }
    /// A trainable leaf sharing this tensor's data (a new identity with no history).
    pub fn to_param(&self) -> Tensor {
        Tensor::build(
            self.shape().clone(),
            self.storage(),
            self.device().clone(),
            true,
            None,
        )
    }
    /// A constant sharing this tensor's data: no history, no gradient (a frozen weight, a saved value).
    pub fn detach(&self) -> Tensor {
        Tensor::build(
            self.shape().clone(),
            self.storage(),
            self.device().clone(),
            false,
            None,
        )
    }

    /// Records the result of a differentiable operation. `backward` receives ∂L/∂output and returns ∂L/∂input
    /// for each of `inputs` in order (`None` where an input gets no gradient). A node is only recorded when
    /// gradients are enabled and some input requires them; otherwise the result is a constant.
    ///
    /// This is how every op in `crate::ops` is built, and how a user defines a new one.
    pub fn from_op(
        op: &'static str,
        storage: Storage,
        shape: Shape,
        inputs: &[&Tensor],
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        crate::profile::forward_op(op);
        let device = inputs
            .first()
            .map(|t| t.device().clone())
            .unwrap_or_else(Device::cpu);
        let track = is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        let node = track.then(|| {
            let backward: BackwardFn = Box::new(backward);
            Arc::new(Node {
                op,
                inputs: inputs.iter().map(|&t| t.clone()).collect(),
                backward,
            })
        });
        Tensor::build(shape, storage, device, track, node)
    }

    /// This tensor's identity.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }
    /// The device holding the data.
    pub fn device(&self) -> &Device {
        &self.0.device
    }
    /// True for trainable leaves and for results computed from them while gradients are enabled.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// True for a tensor with no recorded history (a parameter or a constant).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }
    /// Runs `f` with write access to this tensor's storage when this handle is the tensor's only one, so
    /// that no other handle to the tensor can observe a change; None otherwise. For a backward rule's
    /// incoming gradient, which the engine drops after the rule: the rule may write its result over it.
    /// The storage itself may still be shared with another tensor (a detached copy, a gradient returned
    /// twice), so `f` must change it only where it finds it unshared (`Arc::get_mut`).
    pub(crate) fn with_unique_storage<R>(&self, f: impl FnOnce(&mut Storage) -> R) -> Option<R> {
        if Arc::strong_count(&self.0) != 1 || Arc::weak_count(&self.0) != 0 {
            return None;
        }
        let mut storage = self.0.storage.write().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut storage))
    }

    /// The storage handle (shared, cheap to clone).
    pub fn storage(&self) -> Storage {
        self.0
            .storage
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Copies the data to the host (a readback on a GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let mut v = self.device().backend().download(&self.storage())?;
        v.truncate(self.numel());
        Ok(v)
    }
    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("tensor of shape {} is not a single value", self.shape()),
            ));
        }
        Ok(self.to_vec()?[0])
    }
    /// The same values on another device (a constant: no history).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.detach());
        }
        Tensor::from_slice(&self.to_vec()?, self.shape().clone(), device)
    }

    /// Replaces this leaf's data with `value`'s (same shape and device), keeping its identity: how optimizers
    /// update parameters. Tensors computed earlier from this one keep the old data.
    pub fn assign(&self, value: &Tensor) -> Result<()> {
        if !self.is_leaf() {
            return Err(Error::invalid(
                "assign",
                "only a leaf tensor (a parameter or constant) can be assigned",
            ));
        }
        if value.shape() != self.shape() {
            return Err(Error::shape(
                "assign",
                format!(
                    "cannot assign a {} tensor to a {} tensor",
                    value.shape(),
                    self.shape()
                ),
            ));
        }
        self.device().check_same("assign", value.device())?;
        *self.0.storage.write().unwrap_or_else(|e| e.into_inner()) = value.storage();
        Ok(())
    }

    /// An error unless `other` is on this tensor's device.
    pub(crate) fn check_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        self.device().check_same(op, other.device())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(#{} {} on {}",
            self.id(),
            self.shape(),
            self.device().name()
        )?;
        if let Some(node) = self.node() {
            write!(f, ", from {}", node.op)?;
        } else if self.requires_grad() {
            write!(f, ", param")?;
        }
        write!(f, ")")
    }
}
