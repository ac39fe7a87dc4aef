//! Text encoders in Hugging Face's layout: server-side tokenisation ([`tokenizer`]), the
//! transformer encoder ([`encoder`]) and the families built on it ([`bert`]).

pub mod bert;
pub mod encoder;
pub mod tokenizer;
