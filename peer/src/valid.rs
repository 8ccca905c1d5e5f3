//! Arguments checked before the handler runs (feature `validate`): the
//! seed's "binder". Rules are declared on the argument type with
//! [`garde`]'s derive; a body that breaks one is answered with
//! 400 `Invalid Argument`, naming the field and the rule, and the handler
//! does not run.
//!
//! ```
//! use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, Valid};
//! use teleport_core::Rerror;
//!
//! #[derive(serde::Deserialize, garde::Validate)]
//! struct SignUp {
//!     #[garde(length(min = 3, max = 32))]
//!     name: String,
//!     #[garde(range(min = 13))]
//!     age: u8,
//! }
//!
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.pull("/sign_up", |_ctx: PullCtx, Valid(s): Valid<SignUp>| async move {
//!     Ok::<_, Rerror>(format!("welcome, {}", s.name))
//! });
//! ```

use serde::de::DeserializeOwned;
use teleport_core::{Codec, CodecError, DecodeBody};

pub use garde;

/// An argument whose [`garde::Validate`] rules hold: decoded with the
/// pull's codec, then checked. Take it apart with `Valid(value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid<T>(pub T);

impl<T> Valid<T> {
    /// The checked value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Valid<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DecodeBody for Valid<T>
where
    T: DeserializeOwned + garde::Validate,
    T::Context: Default,
{
    fn decode_body(codec: &dyn Codec, src: &[u8]) -> Result<Self, CodecError> {
        check(T::decode_body(codec, src)?)
    }

    fn empty_body() -> Result<Self, CodecError> {
        check(T::empty_body()?)
    }
}

/// Runs the rules; what they report becomes the error's reason, one
/// `field: message` per broken rule.
fn check<T: garde::Validate>(value: T) -> Result<Valid<T>, CodecError>
where
    T::Context: Default,
{
    match value.validate_with(&T::Context::default()) {
        Ok(()) => Ok(Valid(value)),
        Err(report) => {
            let reason = report
                .iter()
                .map(|(path, e)| format!("{path}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(CodecError::Invalid { reason })
        }
    }
}
