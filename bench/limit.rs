//! The limit: the fastest an axum server on this machine answers the same requests. Its
//! handler reads the whole body and answers 202 with no body — nothing else.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;

async fn accept(body: Body) -> StatusCode {
    // Read the body as weir does (to bytes, with a limit), then drop it.
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let app = Router::new().fallback(accept);
        axum::serve(listener, app).await.context("serving")
    })
}
