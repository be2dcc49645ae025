//! The dashboard's style sheet and its one script, embedded in the binary: nothing is
//! fetched from anywhere else (the pages' Content-Security-Policy allows only these).

use axum::{
    extract::Path,
    http::header,
    response::{IntoResponse, Response},
};

use super::error::UiError;

const STYLE: &str = include_str!("templates/style.css");
const LIVE: &str = include_str!("templates/live.js");

/// `GET /ui/assets/{file}`: public (the login page needs the style too), cached an hour.
pub async fn get(Path(file): Path<String>) -> Result<Response, UiError> {
    let (body, kind) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (LIVE, "text/javascript; charset=utf-8"),
        _ => return Err(UiError::NotFound("no such file".into())),
    };
    Ok(([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response())
}
