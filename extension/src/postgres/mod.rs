//! Raw PostgreSQL internals, kept in one place: SPI statements with kept generic plans
//! (`spi`), relations and indexes opened behind guards that close them on drop, column
//! lookup and index insertion (`relation`), and the shape check that decides whether the
//! tables are still what the direct writes were written for (`shape`).

pub mod relation;
pub mod shape;
pub mod spi;
