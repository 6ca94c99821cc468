//! The `#[dagger::task]` attribute of dagger-rs.
//!
//! ```ignore
//! #[dagger::task]
//! fn add(a: u64, b: u64) -> u64 { a + b }
//! ```
//! keeps `add` callable as a plain function and adds a field-less struct of the same name
//! (structs with braces and functions live in different namespaces) whose associated items
//! are `add::spawn(&ctx, a, b)`, `add::delayed(a, b)`, `add::with(options)` and
//! `add::NAME`, and registers the function under a stable name so that every process of
//! the binary can run it. Everything is generated at the function's own level, so a task
//! may be defined inside another function and use that scope's types.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, FnArg, ItemFn, Pat, ReturnType};

/// Registers a function as a dagger task. See the crate documentation.
///
/// Options: `#[dagger::task(name = "my.stable.name")]` overrides the registered name
/// (by default `module_path!()::fn_name`).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let mut name_override: Option<syn::LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name_override = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown option; expected `name = \"...\"`"))
        }
    });
    parse_macro_input!(attr with parser);
    match expand(func, name_override) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    func: ItemFn,
    name_override: Option<syn::LitStr>,
) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "dagger tasks must not be async",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "dagger tasks cannot be generic",
        ));
    }
    let vis = &func.vis;
    let ident = &sig.ident;
    let mut arg_idents = Vec::new();
    let mut arg_types = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(r, "dagger tasks cannot take self"));
            }
            FnArg::Typed(pt) => {
                let id = match &*pt.pat {
                    Pat::Ident(pi) => pi.ident.clone(),
                    _ => format_ident!("arg{}", i),
                };
                arg_idents.push(id);
                arg_types.push((*pt.ty).clone());
            }
        }
    }
    let ret_ty: syn::Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let name_expr = match name_override {
        Some(l) => quote!(#l),
        None => quote!(concat!(module_path!(), "::", stringify!(#ident))),
    };
    let n = arg_idents.len();
    let idx: Vec<usize> = (0..n).collect();
    let arg_names: Vec<String> = arg_idents.iter().map(|i| i.to_string()).collect();
    let generic_params: Vec<syn::Ident> = (0..n).map(|i| format_ident!("__A{}", i)).collect();

    let builder = format_ident!("__{}_with", ident);

    // Everything is generated beside the function, at the same level (no module), so a
    // task may be defined inside a function body and may use that scope's types. `inc`
    // becomes both the function (value namespace) and a field-less struct (type
    // namespace) whose associated items are `inc::spawn`, `inc::delayed`, `inc::with` and
    // `inc::NAME`.
    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}

        /// A task with options; call `spawn` or `delayed` on it.
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #builder {
            options: ::dagger::Options,
        }

        const _: () = {
            fn __dagger_call(__dagger_args: &mut [::dagger::__private::ArgValue<'_>]) -> ::core::result::Result<::dagger::__private::TaskOutput, ::dagger::__private::CallError> {
                if __dagger_args.len() != #n {
                    return ::core::result::Result::Err(::dagger::__private::CallError::arity(#n, __dagger_args.len()));
                }
                #(
                    let #arg_idents: #arg_types = ::dagger::__private::decode_arg(&mut __dagger_args[#idx], #arg_names)?;
                )*
                let __dagger_result: #ret_ty = #ident(#(#arg_idents),*);
                {
                    // A device-resident result stays on its device; any other is encoded.
                    #[allow(unused_imports)]
                    use ::dagger::__private::{OutputInPlace as _, OutputViaSerialize as _};
                    (&&::dagger::__private::OutputOf(__dagger_result)).task_output()
                }
            }

            ::dagger::__private::inventory::submit! {
                ::dagger::__private::TaskFn {
                    name: #name_expr,
                    call: __dagger_call,
                    result_type: ::core::any::type_name::<#ret_ty>,
                    arg_types: || ::std::vec![#( ::core::any::type_name::<#arg_types>() ),*],
                }
            }
        };

        #[allow(dead_code, clippy::all)]
        impl #ident {
            /// The name this task is registered under.
            pub const NAME: &'static str = #name_expr;

            /// Starts the task now on `ctx`; each argument is a value or a handle to
            /// another task's result (a dependency).
            pub fn spawn<#(#generic_params: ::dagger::IntoArg<#arg_types>),*>(
                __dagger_ctx: &::dagger::Context,
                #(#arg_idents: #generic_params),*
            ) -> ::core::result::Result<::dagger::Handle<#ret_ty>, ::dagger::SubmitError> {
                Self::with(::dagger::Options::new()).spawn(__dagger_ctx, #(#arg_idents),*)
            }

            /// Describes the task without running it; run it with `Context::collect`.
            pub fn delayed<#(#generic_params: ::dagger::IntoLazy<#arg_types>),*>(
                #(#arg_idents: #generic_params),*
            ) -> ::dagger::Lazy<#ret_ty> {
                Self::with(::dagger::Options::new()).delayed(#(#arg_idents),*)
            }

            /// The task with options (scope, retries, priority).
            pub fn with(options: ::dagger::Options) -> #builder {
                #builder { options }
            }
        }

        #[allow(dead_code, clippy::all)]
        impl #builder {
            /// Like `spawn`, with this builder's options.
            pub fn spawn<#(#generic_params: ::dagger::IntoArg<#arg_types>),*>(
                self,
                __dagger_ctx: &::dagger::Context,
                #(#arg_idents: #generic_params),*
            ) -> ::core::result::Result<::dagger::Handle<#ret_ty>, ::dagger::SubmitError> {
                let __dagger_args = [#( ::dagger::IntoArg::<#arg_types>::into_arg(#arg_idents, __dagger_ctx)? ),*];
                __dagger_ctx.spawn_args::<#ret_ty, _>(#ident::NAME, __dagger_args, self.options)
            }

            /// Like `delayed`, with this builder's options.
            pub fn delayed<#(#generic_params: ::dagger::IntoLazy<#arg_types>),*>(
                self,
                #(#arg_idents: #generic_params),*
            ) -> ::dagger::Lazy<#ret_ty> {
                let __dagger_args = ::std::vec![#( ::dagger::IntoLazy::<#arg_types>::into_lazy(#arg_idents) ),*];
                ::dagger::Lazy::new(#ident::NAME, __dagger_args, self.options)
            }
        }
    })
}
