//! Accounts, regions and STS: each account and region sees only its own pipelines and
//! executions, AssumeRole's credentials act in the role's account, AssumeRole's checks and
//! refusals, expired credentials, and STS's own XML protocol on the emulator's port.

use std::time::Duration;

use crate::{
    callback_pipeline, step,
    support::{
        self, Admin, all_steps, assume, create_pipeline, default_keys, execution_status,
        sagemaker_client_in, session_keys, spawn_emulator, start_execution, sts_client, token,
        wait_for_status,
    },
};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

pub(crate) const ROLE_ACCOUNT: &str = "111111111111";
pub(crate) const DEFAULT_ACCOUNT: &str = "123456789012";

#[tokio::test]
async fn each_account_and_region_sees_only_its_own_pipelines_and_executions() {
    let emulator = spawn_emulator(1000.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role_keys = assume(endpoint, &format!("arn:aws:iam::{ROLE_ACCOUNT}:role/team")).await;
    let mut scopes = Vec::new();
    for (account, keys) in [(DEFAULT_ACCOUNT, default_keys()), (ROLE_ACCOUNT, role_keys)] {
        for region in ["us-east-1", "eu-west-1"] {
            let client = sagemaker_client_in(endpoint, region, keys.clone(), 1);
            scopes.push((account, region, client));
        }
    }

    // One name in every scope: four pipelines, as in four real accounts and regions.
    let mut made = Vec::new();
    for (account, region, client) in &scopes {
        let (pipeline_arn, execution_arn) = callback_pipeline(client, "Shared").await;
        assert_eq!(
            pipeline_arn,
            format!("arn:aws:sagemaker:{region}:{account}:pipeline/shared")
        );
        assert!(
            execution_arn.starts_with(&format!("{pipeline_arn}/execution/")),
            "{execution_arn}"
        );
        let steps = all_steps(client, &execution_arn).await;
        made.push((
            pipeline_arn,
            execution_arn,
            support::callback_token(step(&steps, "Approve")),
        ));
    }

    for (i, (account, region, client)) in scopes.iter().enumerate() {
        let (own_pipeline, own_execution, _) = &made[i];
        let described = client
            .describe_pipeline()
            .pipeline_name("Shared")
            .send()
            .await
            .unwrap();
        assert_eq!(described.pipeline_arn(), Some(own_pipeline.as_str()));
        let listed = client
            .list_pipeline_executions()
            .pipeline_name("Shared")
            .send()
            .await
            .unwrap();
        let listed: Vec<_> = listed
            .pipeline_execution_summaries()
            .iter()
            .filter_map(|s| s.pipeline_execution_arn())
            .collect();
        assert_eq!(listed, [own_execution.as_str()]);

        for (j, (pipeline_arn, execution_arn, callback)) in made.iter().enumerate() {
            if i == j {
                continue;
            }
            let e = client
                .describe_pipeline()
                .pipeline_name(pipeline_arn)
                .send()
                .await
                .unwrap_err();
            assert!(
                e.as_service_error().unwrap().is_resource_not_found(),
                "{account} {region} sees {pipeline_arn}: {e:?}"
            );
            let e = client
                .describe_pipeline_execution()
                .pipeline_execution_arn(execution_arn)
                .send()
                .await
                .unwrap_err();
            assert!(
                e.as_service_error().unwrap().is_resource_not_found(),
                "{account} {region} sees {execution_arn}: {e:?}"
            );
            let e = client
                .stop_pipeline_execution()
                .pipeline_execution_arn(execution_arn)
                .client_request_token(token())
                .send()
                .await
                .unwrap_err();
            assert!(e.as_service_error().unwrap().is_resource_not_found());
            let e = client
                .send_pipeline_execution_step_success()
                .callback_token(callback)
                .send()
                .await
                .unwrap_err();
            assert!(e.as_service_error().unwrap().is_resource_not_found());
        }
    }
    // Nothing the other scopes tried reached an execution.
    for ((_, _, client), (_, execution_arn, _)) in scopes.iter().zip(&made) {
        assert_eq!(execution_status(client, execution_arn).await, "Executing");
    }

    // A callback answered in its own scope lets that execution go on; the step's job ARN names
    // the execution's region and account.
    let (account, region, client) = &scopes[3];
    let (_, execution_arn, callback) = &made[3];
    client
        .send_pipeline_execution_step_success()
        .callback_token(callback)
        .send()
        .await
        .unwrap();
    wait_for_status(client, execution_arn, "Succeeded").await;
    let steps = all_steps(client, execution_arn).await;
    let job = step(&steps, "Train")
        .metadata()
        .and_then(|m| m.training_job())
        .and_then(|j| j.arn())
        .unwrap();
    assert!(
        job.starts_with(&format!(
            "arn:aws:sagemaker:{region}:{account}:training-job/"
        )),
        "{job}"
    );

    // The admin surface and the library find an execution of any account by its ARN.
    assert_eq!(admin.callbacks(&made[2].1).await.len(), 1);
    assert_eq!(admin.stop_tokens(&made[2].1).await, Vec::<String>::new());
    let tokens = emulator.callback_tokens(&made[2].1).unwrap();
    assert_eq!(tokens, [("Approve".to_string(), made[2].2.clone())]);
}

#[tokio::test]
async fn an_assumed_roles_credentials_act_in_the_roles_account() {
    let time_scale = 60.0;
    let emulator = spawn_emulator(time_scale, None).await;
    let endpoint = &emulator.endpoint_url;
    let role_arn = format!("arn:aws:iam::{ROLE_ACCOUNT}:role/ops/deployer");
    let sts = sts_client(endpoint, "eu-west-1", default_keys());

    let me = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.account(), Some(DEFAULT_ACCOUNT));
    assert_eq!(me.arn(), Some("arn:aws:iam::123456789012:user/emulator"));
    assert!(me.user_id().unwrap().starts_with("AIDA"), "{me:?}");

    let asked = std::time::SystemTime::now();
    let answer = sts
        .assume_role()
        .role_arn(&role_arn)
        .role_session_name("pipeline-control")
        .send()
        .await
        .unwrap();
    let user = answer.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::111111111111:assumed-role/deployer/pipeline-control"
    );
    let role_id = user.assumed_role_id();
    assert!(
        role_id.starts_with("AROA")
            && role_id.ends_with(":pipeline-control")
            && role_id.len() == 21 + 17,
        "{role_id}"
    );
    let credentials = answer.credentials().unwrap();
    assert!(credentials.access_key_id().starts_with("ASIA"));
    assert!(!credentials.secret_access_key().is_empty());
    assert!(!credentials.session_token().is_empty());
    // One emulated hour at 60x is one real minute: the wall-clock time the keys expire.
    let expires_in = credentials.expiration().as_secs_f64()
        - asked
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    assert!(
        (58.0..=61.0).contains(&expires_in),
        "expires {expires_in} s from now"
    );

    let keys = session_keys(credentials);
    let them = sts_client(endpoint, "eu-west-1", keys.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(them.account(), Some(ROLE_ACCOUNT));
    assert_eq!(them.arn(), Some(user.arn()));
    assert_eq!(them.user_id(), Some(role_id));

    let client = sagemaker_client_in(endpoint, "eu-west-1", keys, 1);
    let pipeline = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let arn = start_execution(&client, &pipeline).await;
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sagemaker:eu-west-1:111111111111:pipeline/{}/execution/",
            pipeline.to_lowercase()
        )),
        "{arn}"
    );
    // The default account's keys do not see it, in that region or any other.
    for region in ["eu-west-1", "us-east-1"] {
        let other = sagemaker_client_in(endpoint, region, default_keys(), 1);
        let e = other
            .describe_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .send()
            .await
            .unwrap_err();
        assert!(e.as_service_error().unwrap().is_resource_not_found());
    }
}

#[tokio::test]
async fn assume_role_checks_its_duration_session_name_and_external_id() {
    let options = sagemaker_emulator::EmulatorOptions {
        role_external_ids: vec![(
            "arn:aws:iam::222222222222:role/vendor".to_string(),
            "from-the-command-line".to_string(),
        )],
        ..Default::default()
    };
    let emulator = sagemaker_emulator::EmulatorServer::bind(([127, 0, 0, 1], 0).into(), &options)
        .await
        .unwrap()
        .spawn();
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let sts = sts_client(endpoint, "us-east-1", default_keys());
    let role = "arn:aws:iam::111111111111:role/R";
    let assume =
        |role: &str, session: &str| sts.assume_role().role_arn(role).role_session_name(session);

    let seconds_left = |answer: &aws_sdk_sts::operation::assume_role::AssumeRoleOutput| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        answer.credentials().unwrap().expiration().as_secs_f64() - now
    };
    let default = assume(role, "s1").send().await.unwrap();
    assert!((3598.0..=3601.0).contains(&seconds_left(&default)));
    for (duration, ok) in [(899, false), (900, true), (43_200, true), (43_201, false)] {
        let answer = assume(role, "s1").duration_seconds(duration).send().await;
        match answer {
            Ok(answer) if ok => {
                let left = seconds_left(&answer);
                assert!((f64::from(duration) - 2.0..=f64::from(duration) + 1.0).contains(&left));
            }
            Err(e) if !ok => {
                assert_eq!(e.code(), Some("ValidationError"));
                let bound = if duration < 900 {
                    "greater than or equal to 900"
                } else {
                    "less than or equal to 43200"
                };
                assert_eq!(
                    e.message().unwrap(),
                    format!(
                        "1 validation error detected: Value '{duration}' at 'durationSeconds' failed to satisfy constraint: Member must have value {bound}"
                    )
                );
                assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
            }
            other => panic!("DurationSeconds {duration}: {other:?}"),
        }
    }
    for bad in ["s", "has space", &"x".repeat(65)] {
        let e = assume(role, bad).send().await.unwrap_err();
        assert_eq!(e.code(), Some("ValidationError"), "{bad}");
        assert!(e.message().unwrap().contains("'roleSessionName'"), "{e:?}");
    }
    let e = assume("arn:aws:iam::1111:role/R", "s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationError"));

    // A role that demands an external id: exactly it, or AccessDenied (403).
    admin
        .set_role(json!({"roleArn": role, "externalId": "the-external-id"}))
        .await;
    let denied = format!(
        "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: sts:AssumeRole on resource: {role}"
    );
    for wrong in [None, Some("another-id")] {
        let e = assume(role, "s1")
            .set_external_id(wrong.map(str::to_string))
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("AccessDenied"), "{wrong:?}");
        assert_eq!(e.message(), Some(denied.as_str()));
        assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);
    }
    assume(role, "s1")
        .external_id("the-external-id")
        .send()
        .await
        .unwrap();

    // --role-external-id does the same.
    let vendor = "arn:aws:iam::222222222222:role/vendor";
    let e = assume(vendor, "s1").send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    assume(vendor, "s1")
        .external_id("from-the-command-line")
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.roles().await,
        json!([
            {"roleArn": role, "externalId": "the-external-id", "refuse": false},
            {"roleArn": vendor, "externalId": "from-the-command-line", "refuse": false},
        ])
    );
}

#[tokio::test]
async fn a_refusing_role_is_access_denied_until_the_rules_are_cleared() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role = "arn:aws:iam::111111111111:role/locked";
    admin
        .set_role(json!({"roleArn": role, "refuse": true}))
        .await;
    // The caller AccessDenied names is the caller: here, another role's session.
    let chained = assume(endpoint, "arn:aws:iam::333333333333:role/hop").await;
    for (keys, caller) in [
        (
            default_keys(),
            "arn:aws:iam::123456789012:user/emulator".to_string(),
        ),
        (
            chained,
            "arn:aws:sts::333333333333:assumed-role/hop/tests".to_string(),
        ),
    ] {
        let e = sts_client(endpoint, "us-east-1", keys)
            .assume_role()
            .role_arn(role)
            .role_session_name("s1")
            .external_id("anything")
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("AccessDenied"));
        assert_eq!(
            e.message().unwrap(),
            format!(
                "User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role}"
            )
        );
    }

    // A rule the admin surface refuses: a role ARN AssumeRole would refuse too.
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/roles"))
        .json(&json!({"roleArn": "not-an-arn", "refuse": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let response = reqwest::Client::new()
        .delete(format!("{endpoint}/_emulator/roles"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assume(endpoint, role).await;
}

#[tokio::test]
async fn expired_credentials_answer_expired_token() {
    // 900 emulated seconds pass in three real seconds.
    let emulator = spawn_emulator(300.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let role = "arn:aws:iam::111111111111:role/short";
    // Keys for the whole test, and keys that last 900 emulated seconds.
    let lasting = assume(endpoint, role).await;
    let answer = sts_client(endpoint, "us-east-1", default_keys())
        .assume_role()
        .role_arn(role)
        .role_session_name("brief")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let credentials = answer.credentials().unwrap();
    let brief = session_keys(credentials);
    let lasting = sagemaker_client_in(endpoint, "us-east-1", lasting, 1);
    let pipeline = create_pipeline(&lasting, json!([{"Name": "A", "Type": "Training"}])).await;

    // Expiration is when the emulated 900 s are over by the wall clock: within 3 s.
    let expiration =
        std::time::UNIX_EPOCH + Duration::from_secs_f64(credentials.expiration().as_secs_f64());
    let left = expiration
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(3), "{left:?}");
    // Expiration is rounded down to the second: the keys expire within a second after it.
    tokio::time::sleep(left + Duration::from_millis(1100)).await;

    let e = sagemaker_client_in(endpoint, "us-east-1", brief.clone(), 1)
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ExpiredTokenException"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    let e = sts_client(endpoint, "us-east-1", brief)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ExpiredToken"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);

    // The same call with keys still valid: the pipeline is there, only the keys expired.
    lasting
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn sts_answers_in_its_own_xml_on_the_same_port() {
    let emulator = spawn_emulator(1.0, Some(5)).await;
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/", emulator.endpoint_url))
            .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEMULATOR/20261201/ap-south-1/sts/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body)
            .send()
    };
    let response = post("Action=GetCallerIdentity&Version=2011-06-15")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/xml");
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let xml = response.text().await.unwrap();
    let user_id = xml
        .split("<UserId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap();
    assert_eq!(
        xml,
        format!(
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/emulator</Arn><UserId>{user_id}</UserId><Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
        )
    );

    let response = post("Action=DecodeAuthorizationMessage&Version=2011-06-15")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>Could not find operation DecodeAuthorizationMessage for version 2011-06-15</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    );
    let response = post("Action=AssumeRole&Version=2011-06-15&RoleSessionName=s1")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response.text().await.unwrap().contains("<Code>ValidationError</Code><Message>1 validation error detected: Value null at &apos;roleArn&apos; failed to satisfy constraint: Member must not be null</Message>"),
    );
}
