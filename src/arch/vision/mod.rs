//! Image classifiers in torchvision's layout, loading torchvision state dicts by their own key
//! names ([`resnet`], [`vit`]).

pub mod resnet;
pub mod vit;
