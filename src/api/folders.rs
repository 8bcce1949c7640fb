//! The signed-in user's folders: listed with their counts, created, renamed, subscribed,
//! emptied and deleted. The same folders IMAP and POP3 clients see.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorBody};
use crate::store::{Folder, folder_name};

/// A folder name as the API's schema describes it: levels separated by `/`, none empty, no
/// control character, `*` or `%`, at most 200 characters: exactly what [`folder_name`]
/// takes.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct FolderName(pub String);

impl utoipa::PartialSchema for FolderName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                "^[^\\u0000-\\u001f\\u007f-\\u009f*%/]+(/[^\\u0000-\\u001f\\u007f-\\u009f*%/]+)*$",
            ))
            .max_length(Some(crate::store::MAX_FOLDER_NAME))
            .into()
    }
}

impl ToSchema for FolderName {}

/// One of the caller's folders (an IMAP mailbox).
#[derive(Serialize, ToSchema)]
pub struct FolderItem {
    /// Its name; `/` separates levels. Pass it as `folder` to `GET /api/v1/messages`.
    pub name: String,
    /// `\Sent`, `\Drafts`, `\Junk`, `\Trash` or `\Archive` (RFC 6154); null for INBOX and
    /// the user's own folders.
    pub special_use: Option<String>,
    /// Whether mail clients show it (IMAP subscription).
    pub subscribed: bool,
    /// Messages in it.
    pub messages: i64,
    /// Messages not read yet.
    pub unseen: i64,
    /// Their total size in bytes.
    pub size: i64,
    /// The folder's UIDVALIDITY (IMAP).
    pub uidvalidity: i64,
    /// The UID the next message in it will get (IMAP).
    pub uidnext: i64,
    /// The highest modification sequence in it (IMAP CONDSTORE).
    pub highestmodseq: i64,
}

/// The caller's folders.
#[derive(Serialize, ToSchema)]
pub struct FolderList {
    /// INBOX, Sent, Drafts, Junk, Trash and Archive first, then the user's own by name.
    pub items: Vec<FolderItem>,
}

/// Lists the caller's folders with their counts.
#[utoipa::path(get, path = "/api/v1/folders", tag = "messages",
    responses((status = 200, body = FolderList), (status = 401, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<FolderList>> {
    let folders = state.stores.mailboxes.list_folders(caller.0.id).await?;
    Ok(Json(FolderList {
        items: folders.into_iter().map(FolderItem::from).collect(),
    }))
}

impl From<Folder> for FolderItem {
    fn from(f: Folder) -> Self {
        Self {
            name: f.name,
            special_use: f.special_use,
            subscribed: f.subscribed,
            messages: f.messages,
            unseen: f.unseen,
            size: f.size,
            uidvalidity: f.uidvalidity,
            uidnext: f.uidnext,
            highestmodseq: f.highestmodseq,
        }
    }
}

/// The caller's folder `name` as listed.
async fn listed(state: &ApiState, caller: &Caller, name: &str) -> ApiResult<FolderItem> {
    let name = folder_name(name)?;
    state
        .stores
        .mailboxes
        .list_folders(caller.0.id)
        .await?
        .into_iter()
        .find(|f| f.name == name)
        .map(FolderItem::from)
        .ok_or_else(|| ApiError::not_found(format!("folder {name} not found")))
}

/// Body of `POST /api/v1/folders`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFolder {
    /// The name: levels separated by `/`, none empty, no control characters, `*` or `%`, at
    /// most 200 characters.
    pub name: FolderName,
}

/// Creates a folder.
#[utoipa::path(post, path = "/api/v1/folders", tag = "messages", request_body = NewFolder,
    responses((status = 201, body = FolderItem), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewFolder>,
) -> ApiResult<(StatusCode, Json<FolderItem>)> {
    state
        .stores
        .mailboxes
        .create_folder(caller.0.id, &body.name.0)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(listed(&state, &caller, &body.name.0).await?),
    ))
}

/// Body of `PATCH /api/v1/folders/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FolderPatch {
    /// A new name (the folders inside it move along). INBOX cannot be renamed.
    pub name: Option<FolderName>,
    /// Whether mail clients show it.
    pub subscribed: Option<bool>,
}

/// Renames a folder or changes its subscription.
#[utoipa::path(patch, path = "/api/v1/folders/{name}", tag = "messages", request_body = FolderPatch,
    params(("name" = FolderName, Path, description = "Folder name, `/` written as %2F")),
    responses((status = 200, body = FolderItem), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<FolderPatch>,
) -> ApiResult<Json<FolderItem>> {
    let mailboxes = &state.stores.mailboxes;
    let mut current = name;
    if let Some(FolderName(new_name)) = body.name {
        mailboxes
            .rename_folder(caller.0.id, &current, &new_name)
            .await?;
        current = new_name;
    }
    if let Some(subscribed) = body.subscribed {
        mailboxes
            .set_subscribed(caller.0.id, &current, subscribed)
            .await?;
    }
    Ok(Json(listed(&state, &caller, &current).await?))
}

/// Deletes a folder and the messages in it (not INBOX, not a folder with folders inside).
#[utoipa::path(delete, path = "/api/v1/folders/{name}", tag = "messages",
    params(("name" = FolderName, Path, description = "Folder name, `/` written as %2F")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let orphans = state
        .stores
        .mailboxes
        .delete_folder(caller.0.id, &name)
        .await?;
    state.stores.delete_blobs(&orphans).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes every message in a folder (empties the Trash, for example).
#[utoipa::path(delete, path = "/api/v1/folders/{name}/messages", tag = "messages",
    params(("name" = FolderName, Path, description = "Folder name, `/` written as %2F")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("basic" = []), ("bearer" = [])))]
pub async fn empty(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let orphans = state
        .stores
        .mailboxes
        .empty_folder(caller.0.id, &name)
        .await?;
    state.stores.delete_blobs(&orphans).await;
    Ok(StatusCode::NO_CONTENT)
}
