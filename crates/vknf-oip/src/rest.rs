//! The REST front end: the specification's paths, JSON bodies, and the binary tensor data extension.
//!
//! Bodies are bounded before they are read (a declared `Content-Length` over the limit is refused at
//! once; a chunked body is cut off at the limit) and must arrive within the body timeout.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use vknf_runtime::ClientBudget;

use crate::body::{Budget, Chunks, Held};
use crate::config::OipConfig;
use crate::error::OipError;
use crate::json::{HEADER_LENGTH, decode_request, encode_response};
use crate::service::{Inference, Model, Protocol};

const JSON: &str = "application/json";
const OCTET_STREAM: &str = "application/octet-stream";

/// The body of a REST response.
pub type ResponseBody = tonic::body::Body;

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata { model: String, version: String },
    ModelReady { model: String, version: String },
    Infer { model: String, version: String },
}

fn route(path: &str) -> Result<Route, OipError> {
    let not_found = || OipError::NotFound(path.to_owned());
    let rest = path.strip_prefix("/v2").ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (model, version, tail) = match segments.as_slice() {
        [] => return Ok(Route::ServerMetadata),
        ["health", "live"] => return Ok(Route::Live),
        ["health", "ready"] => return Ok(Route::Ready),
        ["models", model, "versions", version, tail @ ..] => (decode(model), decode(version), tail),
        ["models", model, tail @ ..] => (decode(model), String::new(), tail),
        _ => return Err(not_found()),
    };
    match tail {
        [] => Ok(Route::ModelMetadata { model, version }),
        ["ready"] => Ok(Route::ModelReady { model, version }),
        ["infer"] => Ok(Route::Infer { model, version }),
        _ => Err(not_found()),
    }
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    // Serialising plain structs of strings, numbers and booleans cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(ResponseBody::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

/// The specification's error object.
fn error_response(error: &OipError) -> Response<ResponseBody> {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    json_response(
        error.http_status(),
        &ErrorBody {
            error: error.to_string(),
        },
    )
}

/// Answers one REST request; its body is charged to `client` (the connection) too, within its share.
pub async fn respond<B>(
    inference: &Inference,
    config: &OipConfig,
    budget: &Budget,
    client: &ClientBudget,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut model = None;
    let result = handle(inference, config, budget, client, request, &mut model).await;
    result.unwrap_or_else(|error| {
        inference.count_error(Protocol::Rest, model.as_ref(), &error);
        error_response(&error)
    })
}

async fn handle<B>(
    inference: &Inference,
    config: &OipConfig,
    budget: &Budget,
    client: &ClientBudget,
    request: Request<B>,
    model_slot: &mut Option<Model>,
) -> Result<Response<ResponseBody>, OipError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = route(request.uri().path())?;
    let method = request.method().clone();
    let expected = if matches!(route, Route::Infer { .. }) {
        Method::POST
    } else {
        Method::GET
    };
    if method != expected {
        return Err(OipError::MethodNotAllowed(format!("{method} {}", request.uri().path())));
    }
    match route {
        Route::ServerMetadata => Ok(json_response(StatusCode::OK, &inference.server_metadata())),
        Route::Live => Ok(health("live", inference.live())),
        Route::Ready => Ok(health("ready", inference.ready())),
        Route::ModelMetadata { model, version } => Ok(json_response(
            StatusCode::OK,
            &inference.model_metadata(&model, &version).await?,
        )),
        Route::ModelReady { model, version } => {
            #[derive(Serialize)]
            struct ModelReady {
                name: String,
                ready: bool,
            }
            let ready = inference.model_ready(&model, &version).await?;
            let status = if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST };
            Ok(json_response(status, &ModelReady { name: model, ready }))
        }
        Route::Infer { model, version } => {
            let model = model_slot.insert(inference.model(&model, &version).await?);
            model.count(Protocol::Rest);
            infer(inference, config, budget, client, model, request).await
        }
    }
}

/// A health answer: 200 when true, 400 when false (the specification: "4xx indicates false").
fn health(what: &'static str, value: bool) -> Response<ResponseBody> {
    let status = if value { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    json_response(status, &std::collections::BTreeMap::from([(what, value)]))
}

async fn infer<B>(
    inference: &Inference,
    config: &OipConfig,
    budget: &Budget,
    client: &ClientBudget,
    model: &Model,
    request: Request<B>,
) -> Result<Response<ResponseBody>, OipError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_length = match request.headers().get(HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| OipError::BadRequest(format!("{HEADER_LENGTH} is not a number")))?,
        ),
    };
    let (body, _held) = read_body(config, budget, client, request).await?;
    let decoded = decode_request(&model.info, body, header_length).map_err(OipError::BadRequest)?;
    let outputs = inference.infer(model, decoded.rows.clone(), &decoded.selected).await?;
    let name = model.name();
    let encoded = encode_response(&name, &model.info, &decoded, outputs);
    let json_length = encoded.json.len();
    let binary = !encoded.binary.is_empty();
    let body = Chunks::new(
        std::iter::once(Bytes::from(encoded.json)).chain(encoded.binary),
        inference.budget(),
    );
    let mut response = Response::new(ResponseBody::new(body));
    let headers = response.headers_mut();
    if binary {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
        headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
    } else {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    }
    Ok(response)
}

/// Reads a body of at most the configured size within the body timeout, charging its bytes to the
/// server's budget (held until the answer is sent); a larger declared length is refused before
/// anything is read.
async fn read_body<B>(
    config: &OipConfig,
    budget: &Budget,
    client: &ClientBudget,
    request: Request<B>,
) -> Result<(Bytes, Held), OipError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = config.max_body_bytes;
    let http1 = request.version() < http::Version::HTTP_2;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit as u64
    {
        if http1 {
            discard_rest(Box::pin(request.into_body()), config.body_timeout);
        }
        return Err(OipError::PayloadTooLarge {
            size,
            limit: limit as u64,
        });
    }
    let mut held = Held::default();
    let mut body = Box::pin(request.into_body());
    let mut buffer = bytes::BytesMut::with_capacity(declared.map_or(0, |d| d as usize));
    let deadline = tokio::time::Instant::now() + config.body_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(OipError::BodyTimeout(config.body_timeout.as_secs())),
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                return Err(OipError::BadRequest(format!("cannot read the request body: {error}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buffer.len() + data.len() > limit {
            if http1 {
                discard_rest(body, config.body_timeout);
            }
            return Err(OipError::PayloadTooLarge {
                size: (buffer.len() + data.len()) as u64,
                limit: limit as u64,
            });
        }
        match budget.take(client, data.len()) {
            Ok(taken) => held.merge(taken),
            Err(over) => {
                // As for a body over the limit: the client may still be sending it.
                if http1 {
                    discard_rest(body, config.body_timeout);
                }
                return Err(OipError::Overloaded(over.to_string()));
            }
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), held))
}

/// Most bytes of a refused HTTP/1.1 body read and dropped after the refusal.
const DISCARD_LIMIT: u64 = 64 << 20;

/// Reads the rest of a refused HTTP/1.1 body and drops it, up to [`DISCARD_LIMIT`] bytes and the body
/// timeout. The refusal is decided and sent before any of it is read, and nothing read is kept, so
/// memory stays bounded. A client that writes its whole body before it reads the answer (most do:
/// HTTP/1.1 has no way to stop it short of `Expect: 100-continue`) would otherwise see the
/// connection reset instead of the 413.
fn discard_rest<B>(mut body: std::pin::Pin<Box<B>>, timeout: std::time::Duration)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    tokio::spawn(async move {
        let mut discarded = 0u64;
        let drain = async {
            while discarded < DISCARD_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_specification_s_endpoints() {
        assert_eq!(route("/v2").unwrap(), Route::ServerMetadata);
        assert_eq!(route("/v2/health/ready").unwrap(), Route::Ready);
        assert_eq!(
            route("/v2/models/traffic%2Fforest/versions/3/infer").unwrap(),
            Route::Infer {
                model: "traffic/forest".into(),
                version: "3".into()
            }
        );
        assert_eq!(
            route("/v2/models/forest/ready").unwrap(),
            Route::ModelReady {
                model: "forest".into(),
                version: String::new()
            }
        );
        assert!(route("/v1/models/forest").is_err());
        assert!(route("/v2/models/forest/explain").is_err());
    }
}
