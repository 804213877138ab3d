//! Training for RecycleGPT: differentiable layers, and recyclable modules distilled from the
//! model they serve.
mod checkpoint;
pub mod corpus;
pub mod distill;
pub mod eval;
pub mod joint;
mod layers;
mod llama;
mod module;
mod optim;
mod output;
mod schedule;
pub mod spec;
mod teacher;
mod teacher_cache;
pub mod tokenizer;

pub use corpus::Corpus;
pub use distill::{train_recycle, DistillOptions, DistillReport};
pub use eval::{evaluate, EvalOptions, EvalReport};
pub use joint::{bench as bench_train, train, TrainOptions, TrainReport};
pub use spec::{ShortContext, TrainSpec};
pub use teacher_cache::TeacherCache;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] recyclegpt_model::ModelError),
    #[error(transparent)]
    Engine(#[from] recyclegpt_engine::EngineError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
