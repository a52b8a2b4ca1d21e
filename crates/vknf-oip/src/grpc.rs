//! The gRPC front end: `inference.GRPCInferenceService` of the specification, generated from
//! `proto/open_inference_grpc.proto`. Tensors travel as `raw_input_contents` / `raw_output_contents`
//! (typed `contents` are accepted as input too).
//!
//! An inference's answer is charged to the process's memory budget and to the connection's share of
//! it (as an unsent answer) before the call is submitted, for the size its outputs will have; the
//! port then keeps it charged until the connection has written it to the socket. A connection whose
//! answers already hold its share (a client that does not read them), or a process whose budget is
//! full, gets `RESOURCE_EXHAUSTED` at once instead of another answer to hold.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use vknf_runtime::{Category, Charge, ClientBudget, FunctionInfo};

use crate::body::AnswerCharge;
use crate::error::OipError;
use crate::input::{check_header, rows_from_contents, rows_from_raw};
use crate::schema::{datatype, output_shape, select_outputs};
use crate::service::{Inference, Model, Protocol};

/// The code generated from the specification's `.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC service over an [`Inference`].
pub struct GrpcService {
    inference: Arc<Inference>,
}

/// The tonic service answering gRPC requests, limited to `max_message_bytes` per message.
pub fn service(inference: Arc<Inference>, max_message_bytes: usize) -> GrpcInferenceServiceServer<GrpcService> {
    GrpcInferenceServiceServer::new(GrpcService { inference })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX)
}

impl GrpcService {
    fn fail(&self, model: Option<&Model>, error: OipError) -> Status {
        self.inference.count_error(Protocol::Grpc, model, &error);
        error.into()
    }

    /// Charges an answer of `n_rows` rows of the `selected` outputs to `client`'s share (or the
    /// process's budget when the request came some other way than through the port).
    fn reserve_answer(
        &self,
        client: Option<&ClientBudget>,
        info: &FunctionInfo,
        n_rows: usize,
        selected: &[usize],
    ) -> Result<Charge, OipError> {
        let bytes = answer_bytes(info, n_rows, selected);
        match client {
            Some(client) => client.try_charge_in_share(Category::Unsent, bytes),
            None => self.inference.budget().try_charge(Category::Unsent, bytes),
        }
        .map_err(|refusal| OipError::Overloaded(refusal.to_string()))
    }

    async fn infer(
        &self,
        request: ModelInferRequest,
        model: &Model,
        client: Option<&ClientBudget>,
    ) -> Result<(ModelInferResponse, Charge), OipError> {
        let info = &model.info;
        let [input] = request.inputs.as_slice() else {
            return Err(OipError::BadRequest(format!(
                "the model takes one input ('{}'), the request has {}",
                info.input.name,
                request.inputs.len()
            )));
        };
        let n_rows = check_header(info, &input.name, &input.datatype, &input.shape).map_err(OipError::BadRequest)?;
        let rows = match (request.raw_input_contents.as_slice(), input.contents.clone()) {
            ([raw], None) => rows_from_raw(info, n_rows, Bytes::clone(raw)),
            ([], Some(contents)) => rows_from_contents(
                info,
                n_rows,
                contents.fp32_contents,
                contents.uint_contents,
                contents.int_contents,
            ),
            ([], None) => Err(format!("input '{}' has no contents", input.name)),
            (raw, _) => Err(format!(
                "raw_input_contents must hold one tensor (and contents none), the request has {} and {} contents",
                raw.len(),
                if input.contents.is_some() { "typed" } else { "no" }
            )),
        }
        .map_err(OipError::BadRequest)?;
        let selected =
            select_outputs(info, request.outputs.iter().map(|o| o.name.as_str())).map_err(OipError::BadRequest)?;
        let answer = self.reserve_answer(client, info, n_rows, &selected)?;
        let mut outputs = self.inference.infer(model, rows, &selected).await?;
        let n_rows = outputs.n_rows as i64;
        let response = ModelInferResponse {
            model_name: model.name(),
            model_version: String::new(),
            id: request.id,
            parameters: Default::default(),
            outputs: selected
                .iter()
                .map(|&index| {
                    let output = &info.outputs[index];
                    InferOutputTensor {
                        name: output.name.clone(),
                        datatype: datatype(output.dtype).to_owned(),
                        shape: output_shape(output, n_rows),
                        parameters: Default::default(),
                        contents: None,
                    }
                })
                .collect(),
            raw_output_contents: selected.iter().map(|&index| Bytes::from(outputs.take(index))).collect(),
        };
        Ok((response, answer))
    }
}

/// Protocol buffer bytes of an answer besides its tensors' data (names, datatypes, shapes, tags),
/// more than they take.
const ANSWER_OVERHEAD: usize = 256;

/// What an answer of `n_rows` rows of the `selected` outputs takes, encoded.
fn answer_bytes(info: &FunctionInfo, n_rows: usize, selected: &[usize]) -> usize {
    selected
        .iter()
        .map(|&index| n_rows.saturating_mul(info.outputs[index].row_bytes()) + ANSWER_OVERHEAD)
        .fold(ANSWER_OVERHEAD, usize::saturating_add)
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse {
            live: self.inference.live(),
        }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.inference.ready(),
        }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        match self.inference.model_ready(&request.name, &request.version).await {
            Ok(ready) => Ok(Response::new(ModelReadyResponse { ready })),
            Err(error) => Err(self.fail(None, error)),
        }
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let metadata = self.inference.server_metadata();
        Ok(Response::new(ServerMetadataResponse {
            name: metadata.name.to_owned(),
            version: metadata.version.to_owned(),
            extensions: metadata.extensions.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let metadata = match self.inference.model_metadata(&request.name, &request.version).await {
            Ok(metadata) => metadata,
            Err(error) => return Err(self.fail(None, error)),
        };
        let tensor = |t: crate::schema::TensorMetadata| TensorMetadata {
            name: t.name,
            datatype: t.datatype.to_owned(),
            shape: t.shape,
        };
        Ok(Response::new(ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform.to_owned(),
            inputs: metadata.inputs.into_iter().map(tensor).collect(),
            outputs: metadata.outputs.into_iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let client = request.extensions().get::<ClientBudget>().cloned();
        let request = request.into_inner();
        let model = match self.inference.model(&request.model_name, &request.model_version).await {
            Ok(model) => model,
            Err(error) => return Err(self.fail(None, error)),
        };
        model.count(Protocol::Grpc);
        match self.infer(request, &model, client.as_ref()).await {
            Ok((response, answer)) => {
                let mut response = Response::new(response);
                response.extensions_mut().insert(AnswerCharge::new(answer));
                Ok(response)
            }
            Err(error) => Err(self.fail(Some(&model), error)),
        }
    }
}
