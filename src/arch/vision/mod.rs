//! Image classifiers in torchvision's layout, loading torchvision state dicts by their own key
//! names ([`resnet`], [`vit`], [`convnext`], [`mobilenet_v3`], [`efficientnet`]). [`image`] holds
//! the serving side the convolutional families share (signature, batching by image size) and
//! [`mbconv`] the inverted residual block of MobileNetV3 and EfficientNet.

pub mod convnext;
pub mod efficientnet;
pub mod image;
pub mod mbconv;
pub mod mobilenet_v3;
pub mod resnet;
pub mod vit;
