//! Android only: the JNI entry point the plugin's `PlatformVerifier.init`
//! calls with the app's `Context` before the first `Client`, so
//! rustls-platform-verifier can reach Android's trust store. Not built or
//! run here (no Android target where the suite runs); the same `jni` calls
//! were compile-checked on the host against a stand-in for the verifier.

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_switchboard_capacitor_PlatformVerifier_initWithContext<'caller>(
    mut unowned_env: jni::EnvUnowned<'caller>,
    _class: jni::objects::JClass<'caller>,
    context: jni::objects::JObject<'caller>,
) {
    unowned_env
        .with_env(|env| -> jni::errors::Result<()> {
            rustls_platform_verifier::android::init_with_env(env, context)
        })
        .resolve::<jni::errors::ThrowRuntimeExAndDefault>();
}
