//! Knowledge benchmark: ingest throughput (chunks per second) and query latency (p50/p99)
//! over a synthetic corpus, on SQLite or PostgreSQL, through the same code paths the API
//! uses (`knowledge::prepare`/`write` in transactions, `knowledge::search`).
//!
//!   cargo run --release --example knowledge_bench -- <database-url> [chunks] [queries]
//!
//! The corpus is deterministic: documents of words drawn from a 5,000-word vocabulary with a
//! Zipf-like skew (a few very common words, a long tail), so term frequencies resemble prose.
//! Prints one Markdown table row per measure.

use std::time::Instant;

use agentplane::db::knowledge::{self as store, KbChanges, KbRow};
use agentplane::db::{Store, StoreError};
use agentplane::knowledge::{self, ChunkOptions, NewDocument, SearchOptions};
use agentplane_api::models::Role;

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An index in 0..n, skewed towards small values.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

fn word(i: usize) -> String {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "de", "fi", "go", "hu",
    ];
    let mut s = String::new();
    let mut n = i + 15;
    while n > 0 {
        s.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: knowledge_bench <database-url> [chunks] [queries]")
    })?;
    let target_chunks: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let queries: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let store = Store::open(&url, 2)?;
    let backend = store.backend().as_str();
    let vocabulary: Vec<String> = (0..5_000).map(word).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let user = store.run_blocking(|conn| {
        agentplane::auth::ensure_user(conn, "bench", "bench", "bench@localhost", Role::Admin)
    })?;
    let content = KbChanges {
        name: "bench".into(),
        kb_type: "bench".into(),
        description: None,
        body: r#"{"processing_options":{"chunk_size":500,"overlap":50}}"#.into(),
    };
    let kb = KbRow::new(&user.org_id, agentplane::ids::new_id("kb"), content);
    store.run_blocking(|conn| store::insert(conn, &kb))?;
    let options = ChunkOptions {
        chunk_size: 500,
        overlap: 50,
    };

    // Ingest: documents of ~4,000 characters (about 9 chunks each), 20 documents per
    // transaction, as an ingest request of 20 documents would.
    let started = Instant::now();
    let mut chunks = 0usize;
    let mut documents = 0usize;
    while chunks < target_chunks {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let mut text = String::with_capacity(4_200);
            while text.len() < 4_000 {
                text.push_str(&vocabulary[rng.zipf(vocabulary.len())]);
                text.push(if rng.next().is_multiple_of(12) {
                    '\n'
                } else {
                    ' '
                });
            }
            let doc = NewDocument {
                title: format!("document {documents}"),
                text,
                content_type: "text/plain".into(),
                source: format!("bench/{documents}.txt"),
                source_type: "inline".into(),
                source_id: None,
                metadata: serde_json::Map::from_iter([(
                    "shard".to_string(),
                    serde_json::Value::from(documents % 10),
                )]),
            };
            documents += 1;
            batch.push(knowledge::prepare(&kb.org_id, &kb.id, doc, options));
        }
        chunks += batch.iter().map(|(_, c)| c.len()).sum::<usize>();
        store.run_blocking(|conn| {
            agentplane::db::write_transaction(conn, |conn| knowledge::write(conn, &batch))
        })?;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    if let agentplane::db::Backend::Postgres = store.backend() {
        store.run_blocking(|conn| {
            use diesel::connection::SimpleConnection;
            conn.batch_execute("ANALYZE knowledge_chunks")
                .map_err(StoreError::from)
        })?;
    }

    // Queries: two or three terms, mid-frequency words mostly (the long tail finds few hits,
    // the head finds nearly every chunk), top 5, some with a metadata filter.
    let kb_ids = vec![kb.id.clone()];
    let mut latencies = Vec::with_capacity(queries);
    let mut hits_total = 0usize;
    for i in 0..queries + 50 {
        let terms = 2 + (rng.next() % 2) as usize;
        let q: Vec<&str> = (0..terms)
            .map(|_| vocabulary[rng.zipf(vocabulary.len())].as_str())
            .collect();
        let mut filters = serde_json::Map::new();
        if i.is_multiple_of(4) {
            filters.insert("shard".into(), serde_json::Value::from(i % 10));
        }
        let opts = SearchOptions {
            top_k: 5,
            min_score: None,
            filters,
        };
        let query = q.join(" ");
        let t = Instant::now();
        let hits = store
            .run_blocking(|conn| knowledge::search(conn, &kb.org_id, &kb_ids, &query, &opts))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i >= 50 {
            // The first 50 warm the caches.
            latencies.push(ms);
            hits_total += hits.len();
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "| {backend} | {chunks} | {documents} | {:.0} | {:.2} | {:.2} | {:.2} | {queries} | {:.1} |",
        chunks as f64 / ingest_secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        hits_total as f64 / queries as f64,
    );
    Ok(())
}
