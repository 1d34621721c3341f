//! Scan queue and admission.
