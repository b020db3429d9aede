//! The SMS gateway on `sms.DOMAIN` (PRODUCT.md §8, `xeps/confab-sms.md`):
//! the component users write to (`gateway`), the SMPP 3.4 backend
//! (`client`, on the PDUs of `smpp`), the HTTP backend (`http`), and SMS
//! text coding and splitting (`text`). Numbers are read by `crate::links::e164` with the location
//! of `[links]`.

pub mod client;
pub mod gateway;
pub mod http;
pub mod smpp;
pub mod text;

pub use gateway::register;
