//! The message codec of the service: prost's, except that a request that does not decode (a
//! string field that is not UTF-8, a wrong wire type) answers INVALID_ARGUMENT with the field
//! it concerns, rather than prost's INTERNAL: the fault is the caller's, and it should say so.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::{domain::FieldViolation, error::Error};

/// The codec the generated server and client use (`codec_path` in build.rs).
#[derive(Debug)]
pub(crate) struct Codec<T, U> {
    inner: ProstCodec<T, U>,
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
            _messages: PhantomData,
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(self.inner.decoder())
    }
}

/// prost's decoder, with decode errors turned into the caller's fault.
#[derive(Debug)]
pub(crate) struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| Error::InvalidArgument(vec![violation(&error)]).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The field a decode error names (prost says `Message.field: what`), and what went wrong.
fn violation(error: &prost::DecodeError) -> FieldViolation {
    let text = error.to_string();
    let detail = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    // The innermost `Message.field` before the description.
    let mut field = "";
    let mut rest = detail;
    while let Some((head, tail)) = rest.split_once(": ") {
        match head.rsplit_once('.') {
            Some((_, name)) if !name.is_empty() && !head.contains(' ') => {
                field = name;
                rest = tail;
            }
            _ => break,
        }
    }
    FieldViolation::undecodable(field, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_names_its_field() {
        // A string field (1) holding bytes that are not UTF-8.
        let bytes: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
        let error = crate::pb::StopExecutionRequest::decode(bytes).unwrap_err();
        let found = violation(&error);
        assert_eq!(found.field, "pipeline_execution_arn");
        assert!(found.description.contains("UTF-8"), "{found:?}");

        // A truncated field is named too.
        let error = crate::pb::StopExecutionRequest::decode(&[0x1a, 0x05, b'a'][..]).unwrap_err();
        assert_eq!(violation(&error).field, "reason");

        // Field number 0 is not a field at all.
        let error = crate::pb::StopExecutionRequest::decode(&[0x00, 0x01][..]).unwrap_err();
        let found = violation(&error);
        assert_eq!(found.field, "");
        assert!(!found.description.is_empty());
    }
}
